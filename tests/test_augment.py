"""Tests for audioclf.augment: mixup, SNR mixing, gain/shift/speed, reverb, time stretch, channel augmentation and
SpecAugment (each in training mode only, and switchable)."""
from __future__ import annotations

import math

import pytest
import torch

from audioclf.augment import (AugmentConfig, ChannelAugment, SpecAugment, TimeStretch, WaveformAugment, filter_augment,
                              freq_mixstyle, mask_along, mix_at_snr, mixup, random_gain, speed_perturb,
                              synthetic_reverb, time_shift, time_stretch)

SR = 8000
SAMPLES = SR // 2  # 0.5 s


def waves(batch: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freqs = torch.tensor([300.0, 1200.0, 700.0, 2000.0])[:batch, None]
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, samples, generator=g)


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


