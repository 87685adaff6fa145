"""Tests for audioclf.models and audioclf.augment: every registered model trains, the head interface,
augmentations only in training mode, mixup, SNR mixing, SpecAugment and the model table."""
from __future__ import annotations

import math
import re

import pytest
import torch

from audioclf.augment import (AugmentConfig, ChannelAugment, SpecAugment, TimeStretch, WaveformAugment, filter_augment,
                              freq_mixstyle, mask_along, mix_at_snr, mixup, random_gain,
                              run_augmentations_eagerly, speed_perturb, synthetic_reverb, time_shift,
                              time_stretch)
from audioclf.features import FrontendConfig
from audioclf.models import AudioClassifier, create_model, list_models, register_model
from audioclf.models.base import Frontend
from audioclf.models.fusion import fold_batchnorm
from audioclf.models.summary import forward_gflops, model_table

SR = 8000
SAMPLES = SR // 2  # 0.5 s
FRONTEND = FrontendConfig(sample_rate=SR, n_mels=32)
EXPECTED_MODELS = {"ast_tiny", "cnn", "cnn6", "cnn10", "cnn14", "crnn", "mobilenet", "resnet", "mn01", "mn02", "mn04", "mn05",
                   "mn10", "mn20", "mn30", "mn40"}



def small_kwargs(name: str) -> dict:
    """Small but structurally complete versions of each model."""
    if name == "ast_tiny":
        return {"dim": 64, "depth": 2, "heads": 2}
    if name in ("cnn6", "cnn10", "cnn14"):
        return {"width": 0.25}
    if name.startswith("mn"):  # EfficientAT widths are fixed by the name
        return {}
    return {"width": 0.5}


def build(name: str, classes: int = 5, augment: AugmentConfig | None = None, **extra):
    torch.manual_seed(0)
    return create_model(name, classes, FRONTEND, augment or AugmentConfig(), **{**small_kwargs(name), **extra})


def waves(batch: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freqs = torch.tensor([300.0, 1200.0, 700.0, 2000.0])[:batch, None]
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, samples, generator=g)


def test_registry_lists_every_model():
    assert set(list_models()) >= EXPECTED_MODELS
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    model = build(name)
    model.train()
    x = waves()
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3]))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    assert model.get_classifier().weight.grad.abs().sum() > 0
    # one optimiser step changes the output
    model.eval()
    before = model(x).detach()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("name", list_models())
def test_head_interface(name):
    model = build(name).eval()
    assert isinstance(model, AudioClassifier)
    assert model.model_name == name and model.model_args == small_kwargs(name)
    x = waves()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.get_classifier()(pooled), logits)
        head = model.head_name + "."
        backbone = {n: p.clone() for n, p in model.named_parameters() if not n.startswith(head)}
        model.reset_classifier(7)
        assert model.num_classes == 7
        assert model(x).shape == (2, 7)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
    for n, p in model.named_parameters():
        if not n.startswith(head):
            assert torch.equal(p, backbone[n])
    names = [n for n, _ in model.named_parameters()]
    backbone_count = len([n for n in names if not n.startswith(head)])
    assert backbone_count > 0 and len(list(model.backbone_parameters())) == backbone_count


@pytest.mark.parametrize("name", list_models())
def test_eval_is_deterministic_and_batch_independent(name):
    model = build(name).eval()
    x = waves(batch=3)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_folding_batch_norms_into_convs_keeps_the_logits(name):
    """``fold_batchnorm`` (what ``audioclf.load`` does for inference) removes every conv-then-batch-norm pair's norm
    and leaves the eval-mode logits as they were; with statistics far from the identity, so a wrong fold shows."""
    model = build(name)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())
    model.eval()
    x = waves(batch=3)
    pairs = sum(isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)
                for seq in model.modules() if isinstance(seq, torch.nn.Sequential) for a, b in zip(seq, seq[1:]))
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == pairs
        after = model(x)
    if name.startswith("cnn") or name == "crnn":
        assert pairs > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.body.modules())
    torch.testing.assert_close(after, before, atol=1e-4 * before.abs().max().item(), rtol=1e-4)


def test_unknown_model_lists_registered_models():
    with pytest.raises(ValueError) as info:
        create_model("no_such_model", 3)
    message = str(info.value)
    assert "no_such_model" in message
    for name in list_models():
        assert name in message


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", bad)


def test_registering_a_name_twice_is_an_error():
    before = list_models()

    def cnn(num_classes, frontend, augment):  # noqa: ARG001
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="twice"):
        register_model(cnn)
    assert list_models() == before
    assert create_model("cnn", 2, FRONTEND, width=0.25).num_classes == 2


def test_create_model_from_plain_dicts():
    """config.json stores the configs as dicts (tuples become lists)."""
    aug = AugmentConfig(snr_db=(3.0, 9.0))
    model = create_model("cnn", 4, FRONTEND.to_dict(), {**aug.to_dict(), "snr_db": [3.0, 9.0]}, width=0.25)
    assert model.frontend.config == FRONTEND
    assert model.frontend.augment_config == aug


def test_transformer_pads_clips_shorter_than_a_patch():
    model = build("ast_tiny").eval()
    with torch.no_grad():
        out = model(waves(samples=800))  # 11 frames < 16-frame patch
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_transformer_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        build("ast_tiny", pooling="max")
    model = build("ast_tiny", pooling="mean").eval()
    assert model.cls_token is None and model(waves()).shape == (2, 5)


# ------------------------------------------------------------------------------------ augmentation on/off


@pytest.mark.parametrize("name", ["cnn", "mobilenet", "ast_tiny"])
def test_augmentation_only_in_training_mode(name):
    x = waves(batch=4)
    on = build(name, augment=AugmentConfig(noise_prob=1.0), dropout=0.0)
    off = build(name, augment=AugmentConfig.off(), dropout=0.0)
    with torch.no_grad():
        on.eval()
        assert torch.equal(on(x), on(x))
        # train mode, no augmentation and no dropout: batch-norm batch statistics are deterministic
        off.train()
        torch.testing.assert_close(off(x), off(x))
        on.train()
        assert not torch.allclose(on(x), on(x))


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_level_norm_makes_predictions_gain_invariant(name):
    torch.manual_seed(0)
    x = waves(batch=3) + 0.3 * torch.randn(3, SAMPLES)  # tones in noise, whose quietest mel bins are ~7e-3
    gains = (1.0, 10.0, 100.0)  # 0, +20, +40 dB: the 1e-6 floor of the log-mel stays out of the way
    model = create_model(name, 4, FRONTEND, AugmentConfig.off(), **small_kwargs(name)).eval()
    plain = Frontend(FrontendConfig(sample_rate=SR, n_mels=32, level_norm=False), AugmentConfig.off()).eval()
    with torch.no_grad():
        inputs = [model.frontend(x * g) for g in gains]
        logits = [model(x * g) for g in gains]
        unnormalised = [plain(x * g) for g in gains]
    for i in (1, 2):
        assert torch.allclose(inputs[i], inputs[0], atol=1e-3)
        assert torch.allclose(logits[i], logits[0], atol=1e-3)
        assert (unnormalised[i] - unnormalised[0]).abs().mean() > 1.0  # without it, the gain shows


def test_frontend_augmentations_only_in_training_mode():
    x = waves(batch=4)
    front = Frontend(FRONTEND, AugmentConfig(noise_prob=1.0))
    plain = Frontend(FRONTEND, AugmentConfig.off())
    with torch.no_grad():
        front.eval(), plain.eval()
        # in eval mode the augmented front end is exactly the plain one (same BN init statistics)
        torch.testing.assert_close(front(x), plain(x))
        front.train(), plain.train()
        torch.testing.assert_close(plain(x), plain(x))
        a, b = front(x), front(x)
        assert a.shape == b.shape == (4, 1, 32, FRONTEND.frames(SAMPLES))
        assert not torch.allclose(a, b)
    assert hasattr(front, "jittered_fb") and not hasattr(plain, "jittered_fb")
    assert front.jittered_fb.shape == (17, 32, FRONTEND.n_fft // 2 + 1)


def test_frontend_stays_float32_under_bf16_autocast():
    # bf16 autocast (the training default where the CPU or GPU computes bf16) covers the network, not the features:
    # a model trains on the same float32 log-mel it is evaluated, served and exported with
    x = waves(batch=3)
    model = build("cnn", augment=AugmentConfig.off()).eval()
    with torch.no_grad():
        plain = model.frontend(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_amp = model.frontend(x)
            logits = model(x)
    assert under_amp.dtype == torch.float32 and torch.equal(under_amp, plain)
    assert logits.dtype == torch.bfloat16  # the network itself does run in bf16


def test_waveform_and_spec_augment_are_identity_in_eval():
    x = waves(batch=3)
    wa = WaveformAugment(AugmentConfig(noise_prob=1.0), SR).eval()
    sa = SpecAugment(AugmentConfig()).eval()
    assert torch.equal(wa(x), x)
    spec = torch.randn(3, 32, 51)
    assert torch.equal(sa(spec), spec)
    wa.train()
    assert not torch.equal(wa(x), x)


# ------------------------------------------------------------------------------------ mixup


@pytest.mark.parametrize("seed", range(5))
def test_mixup_targets_sum_to_one_and_follow_the_inputs(seed):
    torch.manual_seed(seed)
    classes = 6
    y = torch.nn.functional.one_hot(torch.arange(classes) % 4, classes).float()  # some repeated classes
    x = torch.eye(classes)  # inputs equal to the one-hot rows: mixed inputs must equal mixed targets
    x_mix, y_mix = mixup(x, y, alpha=0.4)
    torch.testing.assert_close(y_mix.sum(1), torch.ones(classes))
    assert (y_mix >= 0).all()
    torch.testing.assert_close(x_mix.sum(1), torch.ones(classes))
    # the original example stays dominant (lam >= 0.5)
    assert (x_mix[torch.arange(classes), torch.arange(classes)] >= 0.5 - 1e-6).all()
    # inputs and targets are mixed with the same partner and weight
    torch.testing.assert_close(x_mix @ y, y_mix)
    # soft targets stay normalised too
    soft = torch.softmax(torch.randn(classes, classes), 1)
    _, soft_mix = mixup(torch.randn(classes, 100), soft, alpha=0.3)
    torch.testing.assert_close(soft_mix.sum(1), torch.ones(classes))


def test_mixup_keeps_shapes_for_waveforms():
    x, y = waves(batch=4), torch.softmax(torch.randn(4, 3), 1)
    x_mix, y_mix = mixup(x, y, 0.3)
    assert x_mix.shape == x.shape and y_mix.shape == y.shape


# ------------------------------------------------------------------------------------ SNR mixing


def _snr_db(signal: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    noise = mixed.double() - signal.double()
    return 10 * torch.log10(signal.double().square().mean(-1) / noise.square().mean(-1))


@pytest.mark.parametrize("seed", range(3))
def test_mix_at_snr_hits_the_requested_snr(seed):
    g = torch.Generator().manual_seed(seed)
    n = SR
    t = torch.arange(n) / SR
    signal = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.01 * torch.randn(n, generator=g),
                          0.8 * torch.sin(2 * math.pi * 97 * t), 2.0 * torch.randn(n, generator=g)])
    noise = torch.stack([torch.randn(n, generator=g), 0.3 * torch.sin(2 * math.pi * 1234 * t),
                         5 * torch.randn(n, generator=g), 0.001 * torch.sin(2 * math.pi * 50 * t)])
    snr = torch.tensor([-5.0, 0.0, 10.0, 30.0])
    mixed = mix_at_snr(signal, noise, snr)
    assert mixed.shape == signal.shape
    measured = _snr_db(signal, mixed)
    assert (measured - snr).abs().max() < 0.5, (measured, snr)


def test_waveform_augment_uses_the_noise_bank():
    cfg = AugmentConfig(freq_masks=0, time_masks=0, gain_db=0, shift_seconds=0, noise_prob=1.0,
                        snr_db=(10.0, 10.0), speed=0, fb_jitter=0, mixup_alpha=0)
    aug = WaveformAugment(cfg, SR).train()
    x = waves(batch=3)
    aug.set_noise(torch.randn(5, SR // 10))  # shorter than the clip: tiled
    out = aug(x)
    assert out.shape == x.shape
    measured = _snr_db(x, out)
    assert (measured - 10).abs().max() < 0.5


def test_gain_shift_speed():
    x = waves(batch=3)
    gained = random_gain(x, 6.0)
    ratio_db = 20 * torch.log10(gained.abs().amax(1) / x.abs().amax(1))
    assert (ratio_db.abs() <= 6.0 + 1e-4).all()
    shifted = time_shift(x, 100)
    for row, orig in zip(shifted, x):
        assert any(torch.equal(row, orig.roll(s)) for s in range(-100, 101))
    assert speed_perturb(x, 0.1).shape == x.shape


def test_speed_perturb_scales_each_example_frequency_by_its_own_factor():
    torch.manual_seed(0)
    t = torch.arange(SR) / SR
    x = torch.sin(2 * torch.pi * 440 * t).repeat(16, 1)
    out = speed_perturb(x, 0.15)
    assert out.shape == x.shape
    spectrum = torch.fft.rfft(out[:, : int(SR * 0.8)] * torch.hann_window(int(SR * 0.8)), n=8 * SR)
    peak_hz = spectrum.abs().argmax(dim=1).float() / 8  # bin width 1/8 Hz
    ratio = peak_hz / 440
    assert ((ratio > 0.85 - 0.01) & (ratio < 1.15 + 0.01)).all(), ratio
    assert ratio.std() > 0.03  # not one factor for the whole batch
    assert torch.equal(speed_perturb(x, 0.0), x)


def _t20_rt60(impulse_response: torch.Tensor, sample_rate: int) -> float:
    """RT60 from a room response by Schroeder's backward integration: the -5 to -25 dB slope, extrapolated."""
    energy = impulse_response.double().square()
    edc = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])
    db = 10 * torch.log10(edc / edc[0])
    t5, t25 = int((db > -5).sum()), int((db > -25).sum())
    return (t25 - t5) / sample_rate * 60 / 20


@pytest.mark.parametrize("seed", range(3))
def test_synthetic_reverb_has_the_requested_decay_and_direct_to_reverberant_ratio(seed):
    torch.manual_seed(seed)
    rt60, drr = torch.tensor([0.2, 0.5, 0.8]), torch.tensor([0.0, 6.0, 12.0])
    impulse = torch.zeros(3, SR)
    impulse[:, 0] = 1.0
    rir = synthetic_reverb(impulse, SR, rt60, drr)  # the response itself (its power is rescaled to the input's)
    for row, want_rt60, want_drr in zip(rir, rt60, drr):
        direct, tail = row[0].square(), row[1:].square().sum()
        assert abs(10 * math.log10(direct / tail) - want_drr) < 0.1
        assert abs(_t20_rt60(row[1:], SR) - want_rt60) < 0.1 * want_rt60
    x = waves(batch=3)
    out = synthetic_reverb(x, SR, rt60, drr)
    assert out.shape == x.shape
    torch.testing.assert_close(out.square().mean(1), x.square().mean(1))  # the level is kept
    assert not torch.allclose(out, x, atol=1e-3)


def test_reverb_touches_only_the_examples_it_picks():
    torch.manual_seed(0)
    off = dict(gain_db=0, shift_seconds=0, noise_prob=0, speed=0)
    x = waves(batch=4).repeat(16, 1)
    out = WaveformAugment(AugmentConfig(reverb_prob=0.5, **off), SR).train()(x)
    changed = (out - x).abs().amax(1) > 1e-6
    assert 16 < int(changed.sum()) < 48  # about half, each example on its own draw
    assert torch.equal(WaveformAugment(AugmentConfig(reverb_prob=0.0, **off), SR).train()(x), x)


def test_time_stretch_changes_each_examples_tempo_by_its_own_factor():
    torch.manual_seed(0)
    frames = 100
    ramp = torch.arange(frames, dtype=torch.float32).repeat(16, 8, 1)  # value = frame index, every mel bin
    out = time_stretch(ramp, 0.2)
    assert out.shape == ramp.shape
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same warp for every mel bin of an example
    factor = out[:, 0, 10] / 10  # output frame j reads input frame j * factor
    assert ((factor > 0.8 - 1e-5) & (factor < 1.2 + 1e-5)).all() and factor.std() > 0.05
    for row, f in zip(out[:, 0], factor):
        inside = torch.arange(frames) * f <= frames - 1
        torch.testing.assert_close(row[inside], torch.arange(frames)[inside] * f)
        assert (row[~inside] == 0).all()  # past the end: the example's quietest value
    assert torch.equal(time_stretch(ramp, 0.0), ramp)
    module = TimeStretch(AugmentConfig(stretch=0.2))
    assert torch.equal(module.eval()(ramp), ramp) and not torch.equal(module.train()(ramp), ramp)
    assert torch.equal(TimeStretch(AugmentConfig(stretch=0.0)).train()(ramp), ramp)


# ------------------------------------------------------------------------------------ channel augmentation


@pytest.mark.parametrize("seed", range(5))
def test_filter_augment_adds_a_stepwise_gain_per_example(seed):
    torch.manual_seed(seed)
    spec = torch.randn(6, 40, 30)
    gain = filter_augment(spec, 6.0) - spec  # natural-log power offset
    assert torch.allclose(gain, gain[:, :, :1].expand_as(gain), atol=1e-5)  # the same at every frame
    per_bin = gain[:, :, 0]
    assert per_bin.abs().max() <= 6.0 * math.log(10) / 10 + 1e-5  # within +-6 dB
    steps = (per_bin[:, 1:] - per_bin[:, :-1]).abs() > 1e-6
    assert (steps.sum(1) <= 4).all()  # at most 5 bands, so at most 4 steps
    assert per_bin.std() > 0.05  # and it does something


def test_freq_mixstyle_keeps_content_and_mixes_statistics():
    torch.manual_seed(0)
    spec = torch.randn(8, 20, 50) * torch.rand(8, 20, 1) * 3 + torch.randn(8, 20, 1) * 4
    out = freq_mixstyle(spec, 0.3)
    norm = lambda x: (x - x.mean(2, keepdim=True)) / x.std(2, keepdim=True)  # noqa: E731
    assert torch.allclose(norm(out), norm(spec), atol=1e-3)  # each bin's time course is unchanged
    mu, mu_out = spec.mean(2), out.mean(2)  # (batch, bins): a convex mix of two examples' means
    assert (mu_out >= mu.amin(0) - 1e-4).all() and (mu_out <= mu.amax(0) + 1e-4).all()
    assert not torch.allclose(mu_out, mu, atol=1e-2)
    assert torch.isfinite(freq_mixstyle(torch.randn(4, 8, 1), 0.3)).all()  # a one-frame clip: no NaN


def test_channel_augment_is_identity_in_eval_mode_and_switchable():
    spec = torch.randn(4, 16, 20)
    aug = ChannelAugment(AugmentConfig(mixstyle_prob=1.0))
    assert torch.equal(aug.eval()(spec), spec)
    assert not torch.equal(aug.train()(spec), spec)
    off = ChannelAugment(AugmentConfig(filter_db=0, mixstyle_prob=0)).train()
    assert torch.equal(off(spec), spec)


# ------------------------------------------------------------------------------------ SpecAugment


def _bands(mask_1d: torch.Tensor) -> list[tuple[int, int]]:
    """Runs of True as (start, width)."""
    idx = torch.nonzero(mask_1d).flatten().tolist()
    runs, prev = [], None
    for i in idx:
        if prev is None or i != prev + 1:
            runs.append([i, i])
        else:
            runs[-1][1] = i
        prev = i
    return [(a, b - a + 1) for a, b in runs]


@pytest.mark.parametrize("seed", range(10))
def test_specaugment_masks_zero_whole_bands(seed):
    torch.manual_seed(seed)
    b, mels, frames = 8, 40, 60
    spec = torch.rand(b, mels, frames) + 1.0  # strictly positive, so zeros are masks
    out = mask_along(spec, 1, count=1, max_width=6)
    for e in range(b):
        zero = out[e] == 0
        rows = zero.all(dim=1)
        # a masked mel bin is zero over every frame; an unmasked one is untouched
        assert torch.equal(zero.any(dim=1), rows)
        assert torch.equal(out[e][~rows], spec[e][~rows])
        bands = _bands(rows)
        assert len(bands) <= 1 and all(w <= 6 for _, w in bands)
    out = mask_along(spec, 2, count=2, max_width=10)
    for e in range(b):
        zero = out[e] == 0
        cols = zero.all(dim=0)
        assert torch.equal(zero.any(dim=0), cols)
        assert torch.equal(out[e][:, ~cols], spec[e][:, ~cols])
        assert all(w <= 20 for _, w in _bands(cols))


def test_specaugment_module_masks_both_axes():
    torch.manual_seed(0)
    cfg = AugmentConfig(freq_masks=2, freq_mask_width=0.25, time_masks=2, time_mask_width=0.25)
    spec = torch.rand(64, 32, 50) + 1.0
    out = SpecAugment(cfg).train()(spec)
    zero = out == 0
    assert zero.any()
    # every zero lies on a fully zeroed mel bin or a fully zeroed frame
    rows = zero.all(dim=2, keepdim=True)
    cols = zero.all(dim=1, keepdim=True)
    assert torch.equal(zero, rows | cols)
    assert rows.any() and cols.any()
    assert rows.sum(1).max() <= 2 * 8 and cols.sum(2).max() <= 2 * 12


def test_mask_along_off():
    spec = torch.rand(2, 10, 10)
    assert torch.equal(mask_along(spec, 1, 0, 5), spec)
    assert torch.equal(mask_along(spec, 2, 3, 0), spec)


# ------------------------------------------------------------------------------------ model table


def test_model_table_lists_every_model_with_positive_cost():
    table = model_table(sample_rate=SR, num_classes=10)
    rows = {}
    for line in table.splitlines()[2:]:
        m = re.match(r"^(\S+)\s+([0-9.]+)\s+([0-9.]+)\s+(.+)$", line)
        assert m, line
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4))
    assert set(rows) == set(list_models())
    for name, (params, gflops, doc) in rows.items():
        assert params > 0 and gflops > 0, name
        assert doc
    # widths and depths order the costs as documented
    assert rows["cnn14"][0] > rows["cnn10"][0] > rows["cnn"][0]
    assert rows["mobilenet"][1] < rows["cnn"][1]


def test_forward_gflops_scales_with_audio_length():
    model = build("cnn")
    one = forward_gflops(model, SR, 1.0)
    two = forward_gflops(model, SR, 2.0)
    assert one > 0
    assert 1.7 < two / one < 2.3


def test_inference_batch_size_keeps_cpu_batches_in_cache():
    from audioclf.inference import CPU_BATCH_CELLS, inference_batch_size
    model = build("cnn")  # 32 mels
    frames = FRONTEND.frames(SAMPLES)
    size = inference_batch_size(model, SAMPLES, "cpu")
    assert size == min(64, CPU_BATCH_CELLS // (32 * frames))
    assert size * 32 * frames <= CPU_BATCH_CELLS < (size + 1) * 32 * frames or size == 64
    assert inference_batch_size(model, SR * 600, "cpu") == 1  # ten-minute windows: one at a time
    bf16 = inference_batch_size(model, SAMPLES, "cpu", amp=True)  # activations of half the bytes: twice the cells
    assert bf16 == min(64, 2 * CPU_BATCH_CELLS // (32 * frames)) and (bf16 > size or size == 64)
    assert inference_batch_size(model, SAMPLES, "cuda") == 64  # accelerators are not capped
    assert inference_batch_size(torch.nn.Linear(2, 2), SAMPLES, "cpu") == 64  # no front end to size it by


@pytest.mark.parametrize("name", ["cnn", "crnn"])  # time_pool (every CNN, resnet, mobilenet) and the GRU's pool
def test_pooling_compiles_to_finite_float32_gradients_and_stays_bf16_when_eager(name):
    """``torch.compile`` (PyTorch 2.13, CPU) turned every gradient of a bf16 ``mean(...).amax(...)`` into NaN, so
    ``--compile`` under bf16 autocast trained a model of NaNs: compiled, the pools run in float32 and give the eager
    float32 pool's gradients. Eager, they pool in bf16 under autocast, which generalised better than float32
    (``pooling_precision``)."""
    torch.manual_seed(0)
    model = create_model(name, 10, FRONTEND, AugmentConfig.off(), width=0.25).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.forward_features(torch.randn(4, SAMPLES))
    assert features.dtype == torch.bfloat16  # what the network hands its pool under autocast
    grads = []
    for pool, dtype in ((torch.compile(model.pool), torch.bfloat16), (model.pool, torch.float32)):
        x = features.detach().to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = pool(x)
        pooled.square().sum().backward()
        assert pooled.dtype == torch.float32
        grads.append(x.grad.float())
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-2, rtol=1e-2)  # the compiled grads are rounded to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.pool(features).dtype == torch.bfloat16


def test_compiled_training_keeps_the_augmentations_out_of_the_graphs():
    """``--compile``: the augmentations' per-batch random choices (``.item()`` counts and branches, the jittered
    filter bank's index) would break the graph at each and recompile it for each new value; after
    :func:`run_augmentations_eagerly` the only breaks are the calls into the eager augmentation modules, which
    still augment."""
    torch.manual_seed(0)
    model = create_model("cnn", 10, FrontendConfig(sample_rate=8000)).train()
    x = torch.randn(4, 6000)
    run_augmentations_eagerly(model)
    explanation = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert reasons and all("disable()" in r for r in reasons), reasons
    spec = torch.randn(4, 64, 76)
    assert not torch.equal(model.frontend.spec_augment(spec), spec)  # still augmenting in training mode
    model.eval()
    assert torch.equal(model.frontend.spec_augment(spec), spec)
