"""Log-mel front end: pure functions plus the ``LogMel`` module every model owns.

Shapes follow torchaudio: waveforms ``(batch, samples)``, spectrograms ``(batch, n_mels, frames)``.
The mel filter bank is the Slaney one (``librosa.filters.mel(htk=False, norm="slaney")``), or Kaldi's for the
EfficientAT models (:class:`KaldiLogMel`), computed once per setting and cached; inside the module it is a buffer,
so it travels with the weights, the device and the ONNX graph.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz, 3 mel per 200 Hz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-12) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), hz)


def mel_edges(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """The ``n_mels + 2`` band edges in Hz (float64) of a mel filter bank: evenly spaced on the Slaney mel scale."""
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))


def triangular_filters(sample_rate: int, n_fft: int, edges: np.ndarray) -> np.ndarray:
    """Slaney-normalised triangles, float32 ``(len(edges) - 2, n_fft // 2 + 1)``: filter ``k`` rises from
    ``edges[k]`` to ``edges[k + 1]`` Hz and falls to ``edges[k + 2]``; a filter above Nyquist is all zeros."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular filters, float32 ``(n_mels, n_fft // 2 + 1)``. Cached; do not mutate."""
    f_max = sample_rate / 2 if f_max is None else f_max
    weights = triangular_filters(sample_rate, n_fft, mel_edges(n_mels, f_min, f_max))
    weights.setflags(write=False)
    return weights


def kaldi_mel(hz: np.ndarray) -> np.ndarray:
    """Kaldi's (HTK) mel scale: ``1127 ln(1 + hz / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=32)
def kaldi_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                         f_max: float | None = None) -> np.ndarray:
    """Kaldi's mel bank (``torchaudio.compliance.kaldi.get_mel_banks`` without VTLN), float32
    ``(n_mels, n_fft // 2 + 1)``: unnormalised triangles evenly spaced on :func:`kaldi_mel` from ``f_min`` to
    ``f_max`` (``None``: Nyquist), evaluated at the bins ``0 .. n_fft / 2 - 1``; the Nyquist bin's column is zero.
    Cached; do not mutate."""
    f_max = sample_rate / 2 if f_max is None else f_max
    lo, hi = kaldi_mel(f_min), kaldi_mel(f_max)
    step = (hi - lo) / (n_mels + 1)
    left = lo + step * np.arange(n_mels)[:, None]
    mel = kaldi_mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    rising, falling = (mel - left) / step, (left + 2 * step - mel) / step
    weights = np.zeros((n_mels, n_fft // 2 + 1), np.float32)
    weights[:, :-1] = np.maximum(0.0, np.minimum(rising, falling))
    weights.setflags(write=False)
    return weights


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel settings. Window and hop in milliseconds; frequencies in Hz (``f_max=None``: Nyquist)."""

    sample_rate: int = 16000
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 0.0
    f_max: float | None = None
    level_norm: bool = True  # subtract each window's loudest-frame level (normalize_level): gain-invariant input

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()

    def frames(self, samples: int) -> int:
        """Number of frames ``LogMel`` returns for ``samples`` input samples (centred STFT)."""
        return samples // self.hop_length + 1

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_level(spec: torch.Tensor) -> torch.Tensor:
    """Shift each example's natural-log mel power ``(batch, n_mels, frames)`` so that its loudest frame has a total
    power of 1 (0 dB). A recording's gain then no longer matters (down to the 1e-6 floor of :class:`LogMel`), and
    silence or padding does not move the reference, as it would move a mean."""
    return spec - torch.logsumexp(spec, dim=1).amax(dim=1)[:, None, None]


class LogMel(nn.Module):
    """Waveform ``(batch, samples)`` -> natural-log mel power ``(batch, n_mels, frames)``.

    Centred, Hann-windowed ``torch.stft``; window and filter bank are buffers. Subclasses change the window
    (``periodic_window``), the filter bank (:meth:`filterbank`), the log floor and a waveform :meth:`preprocess`.
    """

    periodic_window = True
    log_floor = 1e-6

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=self.periodic_window)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(self.filterbank(config).copy()), persistent=False)
        self.export_friendly = False  # True: STFT as a conv1d (also used automatically during ONNX export)

    @staticmethod
    def filterbank(config: FrontendConfig) -> np.ndarray:
        """The ``(n_mels, n_fft // 2 + 1)`` filter bank: Slaney's (:func:`mel_filterbank`)."""
        return mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)

    def preprocess(self, waveform: torch.Tensor) -> torch.Tensor:
        """Float32 ``(batch, samples)`` before the STFT; the identity here."""
        return waveform

    def frames(self, samples: int) -> int:
        """Frames returned for ``samples`` input samples."""
        return self.config.frames(samples)

    def forward(self, waveform: torch.Tensor, mel_fb: torch.Tensor | None = None) -> torch.Tensor:
        """``mel_fb`` overrides the filter bank (training-time jitter)."""
        c = self.config
        waveform = self.preprocess(waveform.float())
        if self.export_friendly or torch.onnx.is_in_onnx_export():
            power = self._conv_power(waveform)
        else:
            spec = torch.stft(waveform, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                              window=self.window, center=True, pad_mode="reflect", return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (batch, freqs, frames)
        mel = torch.matmul(self.mel_fb if mel_fb is None else mel_fb, power)
        return torch.log(mel + self.log_floor)

    def _conv_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """Export-friendly power spectrogram: the centred, reflect-padded STFT as one strided conv1d with the
        windowed-DFT basis (real rows, then imaginary rows). Matches the ``torch.stft`` path to float32 rounding."""
        c = self.config
        pad = c.n_fft // 2
        x = nn.functional.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect")
        # a fresh tensor per call (a constant in an exported graph): a cached one would keep whatever tensor mode
        # (e.g. torch.export's fake tensors) it happened to be created under
        basis = torch.from_numpy(dft_basis(c.n_fft, c.win_length, self.periodic_window).copy()).to(x.device)
        out = nn.functional.conv1d(x, basis, stride=c.hop_length)  # (batch, 2 * freqs, frames)
        freqs = c.n_fft // 2 + 1
        return out[:, :freqs].square() + out[:, freqs:].square()


class KaldiLogMel(LogMel):
    """EfficientAT's log-mel (PANNs-style AudioSet models): pre-emphasis ``x[n + 1] - 0.97 x[n]`` (one sample
    shorter), a symmetric Hann window, Kaldi's mel bank (:func:`kaldi_mel_filterbank`) and ``log(mel + 1e-5)``."""

    periodic_window = False
    log_floor = 1e-5
    preemphasis = 0.97

    @staticmethod
    def filterbank(config: FrontendConfig) -> np.ndarray:
        return kaldi_mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)

    def preprocess(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform[:, 1:] - self.preemphasis * waveform[:, :-1]

    def frames(self, samples: int) -> int:
        return self.config.frames(samples - 1)


@lru_cache(maxsize=8)
def dft_basis(n_fft: int, win_length: int, periodic: bool = True) -> np.ndarray:
    """conv1d weights ``(2 * (n_fft // 2 + 1), 1, n_fft)`` float32: the Hann window (``torch.hann_window(win_length,
    periodic)``, centred in ``n_fft`` like ``torch.stft`` does) times cos / -sin of each one-sided DFT bin, computed
    in float64. Cached; read-only."""
    n = np.arange(win_length)
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win_length if periodic else win_length - 1))
    k = np.arange(n_fft // 2 + 1)[:, None]
    phase = 2 * np.pi * ((k * np.arange(n_fft)[None, :]) % n_fft) / n_fft
    basis = np.concatenate([np.cos(phase), -np.sin(phase)]) * window[None, :]
    basis = basis[:, None, :].astype(np.float32)
    basis.setflags(write=False)
    return basis
