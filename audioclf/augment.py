"""Batched augmentations that run inside the model's front end, on its device, in training mode only.

Waveform augmentations act on ``(batch, samples)``; spectrogram ones on ``(batch, n_mels, frames)``.
Mixup lives in the training loop because it also mixes the targets (:func:`mixup`).
Every augmentation is switched off by setting its strength to zero in :class:`AugmentConfig`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; 0 switches one off. Gains and SNRs in dB, shifts in seconds."""

    freq_masks: int = 2          # SpecAugment frequency masks per example
    freq_mask_width: float = 0.15  # max width, fraction of mel bins
    time_masks: int = 2          # SpecAugment time masks per example
    time_mask_width: float = 0.1   # max width, fraction of frames
    gain_db: float = 20.0        # random gain in [-gain_db, +gain_db]: recordings differ in level by tens of dB
    shift_seconds: float = 0.1   # circular time shift up to +-shift_seconds
    noise_prob: float = 0.3      # chance an example gets background noise
    snr_db: tuple[float, float] = (10.0, 40.0)  # noise SNR range
    speed: float = 0.1           # per-example speed perturbation factor in [1 - speed, 1 + speed]
    reverb_prob: float = 0.0     # chance an example is convolved with a synthetic room response (off by default)
    reverb_seconds: float = 0.8  # its reverberation time (RT60) is drawn in [0.1, reverb_seconds] s
    stretch: float = 0.15        # per-example tempo change of the log-mel in [1 - stretch, 1 + stretch], pitch kept
    fb_jitter: float = 0.05      # filter-bank warp: frequencies scaled by 1/(1+x) to 1+x, centred on 1 (0: off)
    filter_db: float = 6.0       # FilterAugment: random gain in [-filter_db, filter_db] dB on 2-5 random mel bands
    mixstyle_prob: float = 0.4   # Freq-MixStyle: chance a batch mixes per-mel-bin statistics between examples
    mixstyle_alpha: float = 0.3  # Freq-MixStyle Beta(alpha, alpha) mixing weight
    mixup_alpha: float = 0.3     # Beta(alpha, alpha) mixup in the loop (0: off)
    mixup_prob: float = 0.5      # chance a batch is mixed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(**{f.name: type(f.default)(0) for f in fields(cls) if f.name != "snr_db"})

    def with_overrides(self, text: str | None) -> "AugmentConfig":
        """Apply ``"key=value,key=value"`` overrides (the ``--aug`` flag); unknown keys raise ``ValueError``."""
        values = self.to_dict()
        kinds = {f.name: type(f.default) for f in fields(self)}  # int counts, float strengths
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in values or key == "snr_db":
                known = ", ".join(k for k in values if k != "snr_db")
                raise ValueError(f"bad augmentation override {item!r}: expected KEY=VALUE with KEY one of {known}")
            try:
                values[key] = kinds[key](float(value))
            except ValueError:
                raise ValueError(f"bad augmentation override {item!r}: {value.strip()!r} is not a number") from None
        return AugmentConfig(**values)


def random_gain(wave: torch.Tensor, max_db: float) -> torch.Tensor:
    """Scale each example by a gain drawn uniformly in ``[-max_db, max_db]`` dB."""
    db = (torch.rand(wave.shape[0], 1, device=wave.device) * 2 - 1) * max_db
    return wave * torch.pow(10.0, db / 20)


def time_shift(wave: torch.Tensor, max_samples: int) -> torch.Tensor:
    """Circularly shift each example by up to ``max_samples`` either way."""
    n = wave.shape[-1]
    shifts = torch.randint(-max_samples, max_samples + 1, (wave.shape[0], 1), device=wave.device)
    idx = (torch.arange(n, device=wave.device)[None, :] - shifts) % n
    return torch.gather(wave, 1, idx)


def mix_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Add ``noise`` scaled so that signal power / noise power equals ``snr_db`` per example.

    signal, noise: ``(batch, samples)``; snr_db: ``(batch,)``.
    """
    p_signal = signal.square().mean(dim=-1).clamp_min(1e-10)
    p_noise = noise.square().mean(dim=-1).clamp_min(1e-10)
    scale = torch.sqrt(p_signal / (p_noise * torch.pow(10.0, snr_db / 10)))
    return signal + noise * scale[:, None]


def speed_perturb(wave: torch.Tensor, max_change: float) -> torch.Tensor:
    """Play each example at its own random speed in ``[1-max_change, 1+max_change]`` (pitch and tempo change
    together, as between speakers' vocal tracts), keeping the length: a sped-up example ends in zeros, a
    slowed one is cut. Linear interpolation, ``(batch, samples)`` -> same shape."""
    pos = scaled_positions(wave, max_change)  # source sample of each output
    return read_at(wave, pos) * (pos <= wave.shape[-1] - 1).to(wave.dtype)


def scaled_positions(x: torch.Tensor, max_change: float) -> torch.Tensor:
    """For ``x`` ``(batch, ..., n)``: the positions ``(batch, n)`` that play each example at its own rate, drawn
    uniformly in ``[1 - max_change, 1 + max_change]``: output step ``j`` reads input position ``j * rate``."""
    factor = 1.0 + (torch.rand(x.shape[0], 1, device=x.device) * 2 - 1) * max_change
    return torch.arange(x.shape[-1], device=x.device, dtype=torch.float32)[None, :] * factor


def read_at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x`` ``(batch, ..., n)`` read at fractional positions ``pos`` ``(batch, n)`` along its last axis, each
    example at its own positions, by linear interpolation (positions past the end read the last value)."""
    n = x.shape[-1]
    lo = pos.floor().long().clamp_(max=n - 1)
    hi = (lo + 1).clamp_(max=n - 1)
    frac = (pos - lo).clamp_(0, 1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (n,)  # the same positions for every row of an example
    lo, hi = lo.view(shape).expand_as(x), hi.view(shape).expand_as(x)
    frac = frac.view(shape).to(x.dtype)
    return torch.gather(x, -1, lo) * (1 - frac) + torch.gather(x, -1, hi) * frac


def synthetic_reverb(wave: torch.Tensor, sample_rate: int, rt60: torch.Tensor, drr_db: torch.Tensor) -> torch.Tensor:
    """Convolve each example with its own synthetic room impulse response: a direct path plus Gaussian noise
    decaying by 60 dB in ``rt60`` seconds (the statistical model of late reverberation), the tail scaled so the
    direct-to-reverberant energy ratio is ``drr_db``. The result keeps the input's length and its power.
    ``wave``: ``(batch, samples)``; ``rt60``, ``drr_db``: ``(batch,)``."""
    b, n = wave.shape
    x = wave.float()
    taps = max(2, int(rt60.max().item() * sample_rate))
    t = torch.arange(1, taps, device=wave.device, dtype=torch.float32)[None, :] / sample_rate
    tail = torch.randn(b, taps - 1, device=wave.device) * torch.exp(-math.log(1000.0) * t / rt60[:, None])  # -60 dB
    tail = tail * torch.sqrt(torch.pow(10.0, -drr_db / 10) / tail.square().sum(-1).clamp_min(1e-12))[:, None]
    rir = torch.cat([torch.ones(b, 1, device=wave.device), tail], dim=1)
    size = 1 << (n + taps - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(rir, size), size)[:, :n]
    gain = torch.sqrt(x.square().sum(-1) / out.square().sum(-1).clamp_min(1e-12))
    return (out * gain[:, None]).to(wave.dtype)


def time_stretch(spec: torch.Tensor, max_change: float) -> torch.Tensor:
    """Stretch each example's log-mel ``(batch, n_mels, frames)`` in time by its own factor in
    ``[1 - max_change, 1 + max_change]`` (tempo changes, pitch and formants do not), keeping the frame count: a
    sped-up example ends in its quietest value, a slowed one is cut. Linear interpolation between frames."""
    pos = scaled_positions(spec, max_change)  # source frame of each output
    floor = spec.amin(dim=(1, 2), keepdim=True)
    return torch.where((pos <= spec.shape[-1] - 1)[:, None, :], read_at(spec, pos), floor)


def mask_along(spec: torch.Tensor, dim: int, count: int, max_width: int) -> torch.Tensor:
    """SpecAugment: zero ``count`` random bands of width ``< max_width`` along ``dim`` (1 or 2) per example.

    Masked values are set to 0, the mean of the normalised input.
    """
    if count <= 0 or max_width <= 0:
        return spec
    b, size = spec.shape[0], spec.shape[dim]
    pos = torch.arange(size, device=spec.device)
    mask = torch.zeros(b, size, dtype=torch.bool, device=spec.device)
    for _ in range(count):
        width = torch.randint(0, max_width + 1, (b, 1), device=spec.device)
        start = (torch.rand(b, 1, device=spec.device) * (size - width + 1)).long()
        mask |= (pos >= start) & (pos < start + width)
    mask = mask[:, :, None] if dim == 1 else mask[:, None, :]
    return spec.masked_fill(mask, 0.0)


def filter_augment(spec: torch.Tensor, max_db: float, bands: tuple[int, int] = (2, 5)) -> torch.Tensor:
    """FilterAugment (Nam et al., 2022), step type: split the mel axis of each example into a random number of
    bands at random edges and add a random gain in ``[-max_db, max_db]`` dB to each band, imitating microphone
    and room responses. ``spec``: natural-log mel power ``(batch, n_mels, frames)``."""
    b, n_mels = spec.shape[:2]
    count = int(torch.randint(bands[0], bands[1] + 1, ()).item())
    edges = torch.sort(torch.rand(b, count - 1, device=spec.device), dim=1).values * n_mels
    band_of_bin = (torch.arange(n_mels, device=spec.device)[None, :, None] >= edges[:, None, :]).sum(-1)  # (b, mels)
    gains_db = (torch.rand(b, count, device=spec.device) * 2 - 1) * max_db
    gain = torch.gather(gains_db, 1, band_of_bin) * (math.log(10.0) / 10)  # dB -> natural log of power
    return spec + gain[:, :, None]


def freq_mixstyle(spec: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Freq-MixStyle (Schmid et al., DCASE 2022): normalise each mel bin of each example over time, then restore it
    with statistics mixed with a random partner's, ``Beta(alpha, alpha)`` weighted. Swaps channel colouration
    between examples while keeping their content. ``spec``: ``(batch, n_mels, frames)``."""
    mu = spec.mean(dim=2, keepdim=True).detach()
    sigma = (spec.var(dim=2, keepdim=True, correction=0) + eps).sqrt().detach()  # defined for one frame too
    lam = torch.distributions.Beta(alpha, alpha).sample((spec.shape[0], 1, 1)).to(spec.device)
    perm = torch.randperm(spec.shape[0], device=spec.device)
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sigma = lam * sigma + (1 - lam) * sigma[perm]
    return (spec - mu) / sigma * mixed_sigma + mixed_mu


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a random partner: ``lam*x + (1-lam)*x[perm]``; ``y`` are soft targets (batch, classes).

    Returns mixed inputs and mixed targets; targets still sum to one per row when ``y`` does.
    """
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0],)).to(x.device)
    lam = torch.maximum(lam, 1 - lam)  # keep the original example dominant
    perm = torch.randperm(x.shape[0], device=x.device)
    x_mix = lam.view(-1, *([1] * (x.dim() - 1))) * x + (1 - lam.view(-1, *([1] * (x.dim() - 1)))) * x[perm]
    y_mix = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    return x_mix, y_mix


class TrainingOnly(nn.Module):
    """Base of the augmentation modules: :meth:`augment` in training mode, the identity in eval mode."""

    def __init__(self, config: AugmentConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x) if self.training else x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def run_augmentations_eagerly(model: nn.Module) -> None:
    """For ``torch.compile``: leave every augmentation module of ``model`` out of the compiled graphs. Their
    per-batch random choices (how many bands, whether this batch is mixed) are Python values that would break
    the graph and recompile it for each new value; compiled this way the network itself stays one graph."""
    for m in model.modules():
        if isinstance(m, TrainingOnly):
            m.augment = torch.compiler.disable(m.augment)


class WaveformAugment(TrainingOnly):
    """Training-only waveform augmentations; identity in eval mode.

    Background noise comes from ``noise_bank`` (``(clips, samples)``, set with :meth:`set_noise`) or,
    when that is empty, from other examples of the same batch.
    """

    def __init__(self, config: AugmentConfig, sample_rate: int):
        super().__init__(config)
        self.sample_rate = sample_rate
        self.register_buffer("noise_bank", torch.zeros(0, 0), persistent=False)

    def set_noise(self, clips: torch.Tensor) -> None:
        self.noise_bank = clips.to(self.noise_bank.device, torch.float32)

    def _noise_like(self, wave: torch.Tensor) -> torch.Tensor:
        b, n = wave.shape
        if self.noise_bank.numel() == 0:
            return wave.roll(1, dims=0)
        idx = torch.randint(0, self.noise_bank.shape[0], (b,), device=wave.device)
        bank = self.noise_bank[idx]
        if bank.shape[1] < n:
            bank = bank.repeat(1, math.ceil(n / bank.shape[1]))
        start = torch.randint(0, bank.shape[1] - n + 1, ()).item()
        return bank[:, start:start + n]

    def augment(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.speed > 0:
            wave = speed_perturb(wave, c.speed)
        if c.reverb_prob > 0 and c.reverb_seconds > 0:
            rows = (torch.rand(wave.shape[0], device=wave.device) < c.reverb_prob).nonzero()[:, 0]
            if len(rows):  # only the picked rows: the FFT convolution is the costliest waveform augmentation
                rt60 = 0.1 + torch.rand(len(rows), device=wave.device) * max(c.reverb_seconds - 0.1, 0.0)
                drr = torch.rand(len(rows), device=wave.device) * 15.0  # direct-to-reverberant ratio, dB
                wave = wave.index_copy(0, rows, synthetic_reverb(wave[rows], self.sample_rate, rt60, drr))
        if c.shift_seconds > 0:
            wave = time_shift(wave, int(c.shift_seconds * self.sample_rate))
        if c.noise_prob > 0 and wave.shape[0] > 1:
            lo, hi = c.snr_db
            snr = lo + torch.rand(wave.shape[0], device=wave.device) * (hi - lo)
            noisy = mix_at_snr(wave, self._noise_like(wave), snr)
            pick = torch.rand(wave.shape[0], 1, device=wave.device) < c.noise_prob
            wave = torch.where(pick, noisy, wave)
        if c.gain_db > 0:
            wave = random_gain(wave, c.gain_db)
        return wave


class TimeStretch(TrainingOnly):
    """Tempo-only change of log-mel ``(batch, n_mels, frames)`` before normalisation (:func:`time_stretch`): speaking
    rate, and the pace of any sound, varies independently of its pitch, which speed perturbation changes with it."""

    def augment(self, spec: torch.Tensor) -> torch.Tensor:
        return time_stretch(spec, self.config.stretch) if self.config.stretch > 0 else spec


class ChannelAugment(TrainingOnly):
    """FilterAugment and Freq-MixStyle on log-mel ``(batch, n_mels, frames)`` before normalisation: robustness to
    the recording channel (microphone, room colouring)."""

    def augment(self, spec: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.filter_db > 0:
            spec = filter_augment(spec, c.filter_db)
        if c.mixstyle_prob > 0 and spec.shape[0] > 1 and torch.rand(()).item() < c.mixstyle_prob:
            spec = freq_mixstyle(spec, c.mixstyle_alpha)
        return spec


class SpecAugment(TrainingOnly):
    """Frequency and time masks on ``(batch, n_mels, frames)``."""

    def augment(self, spec: torch.Tensor) -> torch.Tensor:
        c = self.config
        spec = mask_along(spec, 1, c.freq_masks, int(c.freq_mask_width * spec.shape[1]))
        return mask_along(spec, 2, c.time_masks, int(c.time_mask_width * spec.shape[2]))
