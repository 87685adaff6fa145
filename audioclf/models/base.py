"""What every model shares: the waveform front end and the head interface.

Every model maps a waveform batch ``(batch, samples)`` to logits ``(batch, classes)``; it owns its
front end (log-mel, input normalisation, training-only augmentation), so training, inference and
export cannot drift apart.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..augment import AugmentConfig, ChannelAugment, SpecAugment, TimeStretch, WaveformAugment
from ..features import FrontendConfig, KaldiLogMel, LogMel, kaldi_mel_filterbank, mel_edges, normalize_level, \
    triangular_filters


class Frontend(nn.Module):
    """Waveform ``(batch, samples)`` -> normalised log-mel ``(batch, 1, n_mels, frames)``, in two steps:

    * :meth:`spectrogram`: log-mel, with waveform augmentation, filter-bank jitter, time stretch and channel
      augmentation in training mode; frame by frame, so long-recording inference computes it once per block and
      slices it;
    * :meth:`normalise`: per window, the level normalisation (``config.level_norm``), a per-mel-bin batch norm
      (learned statistics, frozen in eval mode) and, in training mode, SpecAugment.

    ``forward`` also takes a 4-D ``(batch, 1, n_mels, frames)`` slice of :meth:`spectrogram` output and only
    normalises it (``AudioClassifier.forward_spectrogram``). Subclasses change the log-mel (``logmel_class``), the
    normalisation (:meth:`build_norm`) and the jittered filter banks (:meth:`jittered_filterbanks`).
    """

    logmel_class = LogMel

    def __init__(self, config: FrontendConfig, augment: AugmentConfig = AugmentConfig()):
        super().__init__()
        self.config, self.augment_config = config, augment
        self.logmel = self.logmel_class(config)
        self.norm = self.build_norm(config)
        self.wave_augment = WaveformAugment(augment, config.sample_rate)
        self.time_stretch = TimeStretch(augment)
        self.channel_augment = ChannelAugment(augment)
        self.spec_augment = SpecAugment(augment)
        if augment.fb_jitter > 0:
            fbs = self.jittered_filterbanks(config, augment.fb_jitter)
            self.register_buffer("jittered_fb", fbs, persistent=False)

    @staticmethod
    def build_norm(config: FrontendConfig) -> nn.Module:
        """Per-mel-bin batch norm: learned statistics, frozen in eval mode."""
        return nn.BatchNorm1d(config.n_mels)

    @staticmethod
    def jittered_filterbanks(config: FrontendConfig, jitter: float, count: int = 17) -> torch.Tensor:
        """``count`` mel filter banks whose band edges are the evaluation bank's divided by a warp ``alpha``, the
        warps spaced evenly in log between ``1 / (1 + jitter)`` and ``1 + jitter``; the middle bank is the evaluation
        bank. A tone at ``f`` Hz lands where ``alpha * f`` lands in the evaluation bank, so training sees the frequency
        axis shifted both ways, centred on what evaluation sees: ``(count, n_mels, freqs)``."""
        f_max = config.f_max or config.sample_rate / 2
        edges = mel_edges(config.n_mels, config.f_min, f_max)
        warps = (1.0 + jitter) ** np.linspace(-1.0, 1.0, count)
        banks = [triangular_filters(config.sample_rate, config.n_fft, edges / a) for a in warps]
        return torch.from_numpy(np.stack(banks))

    def frames(self, samples: int) -> int:
        """Frames of :meth:`spectrogram` for ``samples`` input samples."""
        return self.logmel.frames(samples)

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> natural-log mel power ``(batch, n_mels, frames)`` (augmented in training)."""
        waveform = self.wave_augment(waveform)
        fb = None
        if self.training and hasattr(self, "jittered_fb"):
            # a tensor index, not .item(): no host sync on a GPU and no graph break under torch.compile
            fb = self.jittered_fb[torch.randint(0, self.jittered_fb.shape[0], (1,), device=self.jittered_fb.device)][0]
        return self.channel_augment(self.time_stretch(self.logmel(waveform, fb)))

    def normalise(self, spec: torch.Tensor) -> torch.Tensor:
        """One window's ``(batch, n_mels, frames)`` log-mel -> model input ``(batch, 1, n_mels, frames)``."""
        if self.config.level_norm:
            spec = normalize_level(spec)
        return self.spec_augment(self.norm(spec)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Always float32, also under bf16 autocast: the features a model trains on are the ones it is evaluated,
        served and exported with (a bf16 mel matmul would round the log-mel to 3 significant digits)."""
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float())
        return self.normalise(x[:, 0] if x.dim() == 4 else self.spectrogram(x))


class AffineNorm(nn.Module):
    """``(x + shift) * scale``, fixed: a pretrained model's input normalisation."""

    def __init__(self, shift: float, scale: float):
        super().__init__()
        self.shift, self.scale = shift, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.shift) * self.scale


class KaldiFrontend(Frontend):
    """EfficientAT's front end (:class:`~audioclf.features.KaldiLogMel`, then ``(x + 4.5) / 5``), with the same
    training-only augmentations as :class:`Frontend`. Nothing in it is learned, so its state dict is empty."""

    logmel_class = KaldiLogMel

    @staticmethod
    def build_norm(config: FrontendConfig) -> nn.Module:
        return AffineNorm(4.5, 1 / 5)

    @staticmethod
    def jittered_filterbanks(config: FrontendConfig, jitter: float, count: int = 17) -> torch.Tensor:
        """Kaldi banks whose band limits are the evaluation bank's divided by warps spaced evenly in log between
        ``1 / (1 + jitter)`` and ``1 + jitter`` (the upper limit at most Nyquist): ``(count, n_mels, freqs)``."""
        f_max = config.f_max or config.sample_rate / 2
        banks = [kaldi_mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min / a,
                                      min(f_max / a, config.sample_rate / 2))
                 for a in (1.0 + jitter) ** np.linspace(-1.0, 1.0, count)]
        return torch.from_numpy(np.stack(banks))


class AudioClassifier(nn.Module):
    """Base class: ``forward(waveform) = forward_head(forward_features(waveform))``.

    Subclasses build ``self.body`` in ``__init__``, set ``self.num_features`` and implement
    ``forward_features`` (waveform -> feature map or tokens) and ``pool`` (features -> ``(batch, num_features)``).
    """

    num_features: int
    supports_onnx: bool = True  # False: audioclf.export refuses the model with a clear ExportError
    frontend_class = Frontend
    head_name = "classifier"  # the parameters under this name are the head; the rest is the backbone

    def __init__(self, num_classes: int, frontend: FrontendConfig, augment: AugmentConfig, dropout: float = 0.2):
        super().__init__()
        self.num_classes = num_classes
        self.frontend = self.frontend_class(frontend, augment)
        self.head_dropout = nn.Dropout(dropout)

    def init_head(self, num_features: int) -> None:
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, self.num_classes)

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> logits ``(batch, classes)``, or the pooled embedding when ``pre_logits``."""
        pooled = self.pool(features)
        return pooled if pre_logits else self.get_classifier()(self.head_dropout(pooled))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(waveform))

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """Logits from windows ``(batch, 1, n_mels, frames)`` sliced from ``self.frontend.spectrogram(waveform)``:
        long-recording inference computes the spectrogram once per block and slices it; each window is then
        normalised on its own, as a clip would be. Relies on ``forward_features`` passing its input through
        ``self.frontend`` first (every model here does; ``Frontend`` only normalises a 4-D input); a model that
        does not must override this."""
        return self.forward_head(self.forward_features(spec))

    def get_classifier(self) -> nn.Linear:
        """The head: pooled features ``(batch, num_features)`` -> logits ``(batch, classes)``."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes).to(self.classifier.weight.device)

    def backbone_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith(self.head_name + "."))


def time_pool(x: torch.Tensor) -> torch.Tensor:
    """PANNs pooling: ``(batch, channels, freq, time)`` -> mean over freq, then max + mean over time
    (:func:`pooling_precision`)."""
    x = pooling_precision(x).mean(dim=2)
    return x.amax(dim=2) + x.mean(dim=2)


def pooling_precision(x: torch.Tensor) -> torch.Tensor:
    """The features a pool takes: as they are when eager (bf16 under autocast), upcast to float32 inside
    ``torch.compile``.

    Compiled, a bf16 ``mean(...).amax(...)`` cannot train: inductor (CPU, PyTorch 2.13) computes its backward
    against an unrounded float32 copy of the mean, so no element equals the saved bf16 maximum and every gradient
    comes out NaN (``tests/test_models.py``). Eager runs keep bf16 pooling, which generalised better."""
    return at_least_float32(x) if torch.compiler.is_compiling() else x


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` upcast to float32 if it is in a lower precision (bf16 under autocast); float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
