"""Batch-norm adaptation to unlabelled audio (audioclf.adaptation): which statistics it sets, and what it leaves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audioclf.adaptation import adapt_batchnorm, batchnorm_layers, check_adaptable, sample_windows
from audioclf.augment import AugmentConfig
from audioclf.data.windows import windows
from audioclf.features import FrontendConfig, normalize_level
from audioclf.models import create_model

SR, CLIP = 8000, 2000


def noise_clips(seed: int, lengths=(1200, 2000, 5100, 3000, 800, 4400)) -> list[np.ndarray]:
    """Coloured noise (a random tilt per clip, so the mel bins' statistics differ), some shorter than a window."""
    rng = np.random.default_rng(seed)
    clips = []
    for n in lengths:
        x = rng.normal(size=n)
        clips.append((np.convolve(x, [1.0, rng.uniform(-0.9, 0.9)], "same") * rng.uniform(0.05, 0.5)).astype(np.float32))
    return clips


def new_model() -> torch.nn.Module:
    """An untrained CNN with every augmentation on (they must not run while adapting)."""
    torch.manual_seed(0)
    return create_model("cnn", 3, frontend=FrontendConfig(sample_rate=SR, n_mels=32), augment=AugmentConfig(),
                        width=0.25).eval()


def test_adapting_sets_the_front_end_statistics_to_those_of_the_new_audio():
    model, clips = new_model(), noise_clips(1)
    params = {k: v.clone() for k, v in model.named_parameters()}
    momenta = [layer.momentum for layer in batchnorm_layers(model)]
    used = adapt_batchnorm(model, clips, CLIP, batch_size=100, prior_windows=0)
    every_window = np.concatenate([windows(c, CLIP) for c in clips])
    assert used == len(every_window) == 1 + 1 + 5 + 2 + 1 + 4
    # the first batch norm sees the un-augmented, level-normalised log-mel of every window: its statistics
    with torch.no_grad():
        spec = model.frontend.logmel(torch.from_numpy(every_window))
        if model.frontend.config.level_norm:
            spec = normalize_level(spec)
    per_bin = spec.transpose(0, 1).reshape(spec.shape[1], -1)  # (n_mels, windows * frames)
    norm = model.frontend.norm
    torch.testing.assert_close(norm.running_mean, per_bin.mean(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.running_var, per_bin.var(1), rtol=1e-4, atol=1e-4)
    for name, p in model.named_parameters():  # only statistics change
        assert torch.equal(p, params[name]), name
    assert not any(m.training for m in model.modules())
    assert [layer.momentum for layer in batchnorm_layers(model)] == momenta


def test_every_batch_norm_moves_to_the_new_domain_and_the_result_is_reproducible():
    shifted = [np.convolve(c, [1.0, -0.95], "same").astype(np.float32) for c in noise_clips(2)]
    a, b = new_model(), new_model()
    before = [layer.running_mean.clone() for layer in batchnorm_layers(a)]
    assert len(before) >= 5  # the front end's norm and the CNN's
    adapt_batchnorm(a, shifted, CLIP, max_windows=8, batch_size=4, seed=3)
    adapt_batchnorm(b, shifted, CLIP, max_windows=8, batch_size=4, seed=3)
    for old, la, lb in zip(before, batchnorm_layers(a), batchnorm_layers(b)):
        assert not torch.allclose(la.running_mean, old)
        assert torch.equal(la.running_mean, lb.running_mean) and torch.equal(la.running_var, lb.running_var)


def test_the_trained_statistics_weigh_as_prior_windows():
    """``prior_windows=p`` after ``w`` windows: ``(w * new + p * trained) / (w + p)`` in every layer (the forward
    passes normalise with batch statistics, so the new statistics do not depend on p)."""
    clips, trained = noise_clips(6), noise_clips(7)
    models = [new_model() for _ in range(2)]
    for m in models:
        adapt_batchnorm(m, trained, CLIP, prior_windows=0)
    old = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in batchnorm_layers(models[0])]
    w = adapt_batchnorm(models[0], clips, CLIP, prior_windows=0)
    assert adapt_batchnorm(models[1], clips, CLIP, prior_windows=6) == w == 14
    for layer_new, layer_blend, before in zip(*map(batchnorm_layers, models), old):
        for name in ("running_mean", "running_var"):
            expected = (w * getattr(layer_new, name) + 6 * before[name]) / (w + 6)
            torch.testing.assert_close(getattr(layer_blend, name), expected)


def test_a_model_without_batch_norms_after_its_front_end_is_refused():
    """``ast_tiny`` normalises its body with layer norms; adapting its front end alone would make it worse."""
    torch.manual_seed(0)
    model = create_model("ast_tiny", 3, frontend=FrontendConfig(sample_rate=SR, n_mels=32)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="'ast_tiny' has no batch norm after its front end"):
        adapt_batchnorm(model, noise_clips(8), CLIP)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    check_adaptable(new_model())  # the CNN's body has batch norms


def test_windows_are_drawn_across_clips_and_capped():
    clips = noise_clips(3)
    picks = sample_windows(clips, CLIP, max_windows=5, seed=0)
    assert len(picks) == 5 and len(set(picks)) == 5
    every = {(i, s) for i, c in enumerate(clips) for s in range(0, max(1, len(c) - CLIP + 1))}
    assert set(picks) <= every
    assert len(sample_windows(clips, CLIP, max_windows=100)) == 14  # all of them
    assert sample_windows(clips, CLIP, 5, seed=0) == picks and sample_windows(clips, CLIP, 5, seed=1) != picks


def test_an_error_leaves_the_previous_statistics():
    model = new_model()
    adapt_batchnorm(model, noise_clips(5), CLIP)  # statistics other than a new model's zeros and ones
    state = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [layer.momentum for layer in batchnorm_layers(model)]
    with pytest.raises(ValueError, match="no audio to adapt to"):
        adapt_batchnorm(model, [], CLIP)
    with pytest.raises(ValueError, match="max_windows must be at least 1, not 0"):
        adapt_batchnorm(model, noise_clips(4), CLIP, max_windows=0)
    bad = noise_clips(4)[:2] + [np.zeros((2, 3), np.float32)]  # a 2-D "clip" fails mid-way
    with pytest.raises(Exception):
        adapt_batchnorm(model, bad, CLIP, batch_size=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [layer.momentum for layer in batchnorm_layers(model)] == momenta
    assert not any(m.training for m in model.modules())


def test_group_batches_come_from_one_group_each_and_resume_exactly():
    from audioclf.training.samplers import GroupBatchSampler
    groups = list(np.random.default_rng(0).choice(["ann", "ben", "cat"], 100))
    sampler = GroupBatchSampler(groups, batch=8, seed=0)
    counts = {g: groups.count(g) for g in set(groups)}
    assert len(sampler) == sum(n // 8 * 8 for n in counts.values())
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) and len(set(order)) == len(order)
        batches = [order[k:k + 8] for k in range(0, len(order), 8)]
        assert all(len({groups[i] for i in b}) == 1 for b in batches)
        assert len({groups[b[0]] for b in batches}) == 3  # every group trains
        orders.append(order)
    assert orders[0] != orders[1]
    sampler.set_epoch(2, start=16)  # resuming two batches into epoch 2
    assert list(sampler) == orders[1][16:]
    with pytest.raises(ValueError, match=r"--group-batches: 1 group\(s\) have fewer than a batch \(8\) of training"):
        GroupBatchSampler(groups + ["dan"] * 7, batch=8, seed=0)
