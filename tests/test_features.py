"""Tests for audioclf.features: the Slaney mel filter bank and the LogMel front end against librosa."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audioclf.features import FrontendConfig, LogMel, hz_to_mel, mel_filterbank, mel_to_hz


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (8000, 256, 40, 0.0, None),
    (16000, 512, 64, 0.0, None),
    (22050, 1024, 128, 0.0, None),
    (32000, 1024, 64, 50.0, 14000.0),
])
def test_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    # every filter is non-empty (no zero rows at these resolutions)
    assert (ours.max(axis=1) > 0).all()


def test_filterbank_is_cached_and_read_only():
    a = mel_filterbank(16000, 512, 64)
    assert mel_filterbank(16000, 512, 64) is a
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_mel_scale_matches_librosa_and_inverts():
    hz = np.array([0.0, 100.0, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0, 16000.0])
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz, htk=False), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-10, atol=1e-8)


def _librosa_logmel(x: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="reflect", power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney")
    return np.log(mel + 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cfg,seconds", [
    (FrontendConfig(sample_rate=8000, n_mels=40), 0.7),
    (FrontendConfig(sample_rate=16000, n_mels=64), 1.0),
    (FrontendConfig(sample_rate=22050, n_mels=128, win_ms=40, hop_ms=20), 0.5),
    (FrontendConfig(sample_rate=32000, n_mels=64, f_min=50, f_max=14000), 0.3),
])
def test_logmel_matches_librosa(cfg, seconds):
    rng = np.random.default_rng(1)
    n = int(cfg.sample_rate * seconds)
    t = np.arange(n) / cfg.sample_rate
    noise = 0.1 * rng.standard_normal(n)
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    batch = np.stack([noise, sine, noise + sine]).astype(np.float32)
    out = LogMel(cfg)(torch.from_numpy(batch)).numpy()
    assert out.shape == (3, cfg.n_mels, cfg.frames(n))
    for row, x in zip(out, batch):
        ref = _librosa_logmel(x, cfg)
        assert ref.shape == row.shape
        # compare in the log domain where the power is non-negligible, and absolutely in the linear domain
        np.testing.assert_allclose(row, ref, atol=1e-3, rtol=0)
        np.testing.assert_allclose(np.exp(row), np.exp(ref), rtol=1e-3, atol=1e-5)


def test_logmel_of_a_tone_peaks_at_its_mel_band():
    cfg = FrontendConfig(sample_rate=16000, n_mels=64)
    t = torch.arange(16000) / 16000
    spec = LogMel(cfg)(torch.sin(2 * np.pi * 1000 * t)[None])[0]
    band = int(spec.mean(dim=1).argmax())
    centres = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(8000), cfg.n_mels + 2))[1:-1]
    assert abs(centres[band] - 1000) < 100


@pytest.mark.parametrize("samples", [129, 159, 160, 161, 1000, 4000, 16001])
def test_frames_formula(samples):
    cfg = FrontendConfig(sample_rate=8000, n_mels=32)  # hop 80, n_fft 256 (reflect padding needs > 128 samples)
    out = LogMel(cfg)(torch.randn(2, samples))
    assert out.shape == (2, cfg.n_mels, cfg.frames(samples))


def test_derived_sizes():
    cfg = FrontendConfig(sample_rate=16000)
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft) == (400, 160, 512)
    cfg = FrontendConfig(sample_rate=8000)
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft) == (200, 80, 256)
    cfg = FrontendConfig(sample_rate=22050)
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft) == (551, 220, 1024)


def test_buffers_follow_to_and_are_not_saved():
    m = LogMel(FrontendConfig(sample_rate=8000, n_mels=32))
    buffers = dict(m.named_buffers())
    assert set(buffers) == {"window", "mel_fb"}
    assert m.mel_fb.shape == (32, 129) and m.window.shape == (200,)
    np.testing.assert_allclose(m.window.numpy(), torch.hann_window(200).numpy())
    assert not list(m.parameters())
    assert len(m.state_dict()) == 0  # non-persistent: recomputed from the config, not stored
    m64 = m.to(torch.float64)
    assert m64.window.dtype == torch.float64 and m64.mel_fb.dtype == torch.float64
    x = torch.randn(2, 4000, dtype=torch.float64)
    m32 = LogMel(FrontendConfig(sample_rate=8000, n_mels=32))
    np.testing.assert_allclose(m64(x).numpy(), m32(x.float()).numpy(), atol=1e-3)
    m.to(torch.device("meta"))
    assert m.window.device.type == "meta" and m.mel_fb.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_follow_cuda():
    m = LogMel(FrontendConfig(sample_rate=8000, n_mels=32)).cuda()
    assert m.window.is_cuda and m.mel_fb.is_cuda
    x = torch.randn(2, 4000)
    np.testing.assert_allclose(m(x.cuda()).cpu().numpy(), LogMel(m.config)(x).numpy(), atol=1e-3)


def test_filterbank_override():
    cfg = FrontendConfig(sample_rate=8000, n_mels=32)
    m = LogMel(cfg)
    x = torch.randn(1, 4000)
    other = torch.from_numpy(mel_filterbank(8000, cfg.n_fft, 32, 200.0, 3000.0).copy())
    assert not torch.allclose(m(x), m(x, other))
    m2 = LogMel(FrontendConfig(sample_rate=8000, n_mels=32, f_min=200.0, f_max=3000.0))
    torch.testing.assert_close(m(x, other), m2(x))


@pytest.mark.parametrize("freq", [150.0, 1000.0, 5000.0])
def test_filterbank_jitter_is_centred_on_the_evaluation_bank(freq):
    """Training's jittered banks move a tone both ways along the mel axis, around where the evaluation bank puts it
    (banks that only narrow the band put a low tone at lower bins in training than in evaluation, a bias that
    shifted every low class of a tone data set up by one at test time)."""
    from audioclf.augment import AugmentConfig
    from audioclf.models.base import Frontend

    cfg = FrontendConfig(sample_rate=16000, n_mels=64)
    front = Frontend(cfg, AugmentConfig(fb_jitter=0.05))
    spectrum = torch.zeros(cfg.n_fft // 2 + 1)
    spectrum[round(freq / (cfg.sample_rate / cfg.n_fft))] = 1.0  # a tone on an FFT bin

    def centroid(bank: torch.Tensor) -> float:
        energy = bank @ spectrum
        return float((energy * torch.arange(len(energy))).sum() / energy.sum())

    evaluation = centroid(torch.tensor(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)))
    positions = np.array([centroid(bank) for bank in front.jittered_fb])
    middle = len(positions) // 2
    assert positions[middle] == pytest.approx(evaluation, abs=1e-4)  # the evaluation bank is one of them
    assert positions.min() < evaluation - 0.1 and positions.max() > evaluation + 0.1  # moved both ways
    assert abs(positions.mean() - evaluation) < 0.1 * (positions.max() - positions.min())  # centred


def test_kaldi_mel_filterbank_is_kaldis_triangles_on_the_htk_mel_scale():
    from audioclf.features import kaldi_mel, kaldi_mel_filterbank
    fb = kaldi_mel_filterbank(32000, 1024, 128, 0.0, 15000.0)
    assert fb.shape == (128, 513) and fb.dtype == np.float32
    hz = np.arange(513) * 32000 / 1024
    assert not fb[:, -1].any() and fb[:, hz >= 15000].max() < 1e-6  # nothing from f_max up, Nyquist bin empty
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and fb.max() <= 1.0
    # each filter is a triangle in mel: 1 - |mel - centre| / step, centres evenly spaced up to f_max
    step = kaldi_mel(15000.0) / 129
    centre = step * (np.arange(128) + 1)
    want = np.maximum(0, 1 - np.abs(kaldi_mel(hz[:-1])[None] - centre[:, None]) / step)
    np.testing.assert_allclose(fb[:, :-1], want, atol=1e-6)
