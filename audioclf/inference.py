"""Inference on clips and files: whole-clip window averaging, probabilities, top-k labels.

``load(RUN)`` rebuilds a trained model from its run folder (safetensors + JSON, nothing executed).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from .checkpoint import load_run
from .data.windows import window_average
from .predictions import Predictor, scores_from_logits  # noqa: F401  (re-exported)
from .spec import RunSpec


CPU_BATCH_CELLS = 60_000  # float32 mel bins x frames per forward pass on a CPU (see inference_batch_size)


def inference_batch_size(model: torch.nn.Module, samples: int, device: str | torch.device = "cpu",
                         amp: bool = False) -> int:
    """Windows of ``samples`` per forward pass: 64 on an accelerator; on a CPU as many as make about
    ``CPU_BATCH_CELLS`` mel x frame cells in float32, so the activations stay in cache, and twice as many under bf16
    autocast (``amp``), whose activations take half the bytes. Past that a window's cost jumps (``bench/serving.py``
    measures it)."""
    config = getattr(getattr(model, "frontend", None), "config", None)
    if torch.device(device).type != "cpu" or config is None:
        return 64
    cells = CPU_BATCH_CELLS * (2 if amp else 1)
    return max(1, min(64, cells // (config.n_mels * config.frames(samples))))


def bf16_is_native(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16 units, or a CPU with AVX-512 BF16 or AMX.
    Elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older PyTorch: no emulation check
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in native if check is not None)
    return False


def forward_embeddings(model: torch.nn.Module, batch: np.ndarray, device: str | torch.device = "cpu",
                       amp: bool = False) -> np.ndarray:
    """Float32 embeddings ``(batch, num_features)`` of waveforms ``(batch, samples)``: the pooled features the head
    takes (``forward_head(..., pre_logits=True)``); the model must be in eval mode."""
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        x = torch.from_numpy(batch).to(device)
        out = model.forward_head(model.forward_features(x), pre_logits=True)
    return out.float().cpu().numpy()


def forward_logits(model: torch.nn.Module, batch: np.ndarray, device: str | torch.device = "cpu", amp: bool = False,
                   spectrogram: bool = False) -> np.ndarray:
    """Float32 logits ``(batch, classes)`` of waveforms ``(batch, samples)``, or of log-mel windows
    ``(batch, n_mels, frames)`` with ``spectrogram`` (``forward_spectrogram``). ``amp``: the network runs under bf16
    autocast, as in training (the front end stays float32); the model must be in eval mode."""
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        x = torch.from_numpy(batch).to(device)
        out = model.forward_spectrogram(x[:, None]) if spectrogram else model(x)
    return out.float().cpu().numpy()


def clip_logits(model: torch.nn.Module, clips: Sequence[np.ndarray], clip_samples: int, batch_size: int | None = None,
                device: str | torch.device = "cpu", amp: bool = False) -> np.ndarray:
    """Logits ``(clips, classes)``: each clip is covered by half-overlapping windows whose logits are averaged.
    ``batch_size``: windows per forward pass (default :func:`inference_batch_size`); ``amp``: bf16 autocast."""
    batch_size = batch_size or inference_batch_size(model, clip_samples, device, amp)
    model.eval()
    forward = lambda batch: forward_logits(model, batch, device, amp)  # noqa: E731
    return window_average(clips, clip_samples, forward, model.num_classes, batch_size)


class Classifier(Predictor):
    """A trained model with its labels and audio settings. Build with :func:`load`. ``amp``: the forward passes
    run under bf16 autocast (faster where bf16 is native, :func:`bf16_is_native`; scores differ from float32's,
    which the ONNX export matches, by about 1e-2 at most)."""

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu", amp: bool = False):
        # channels-last activations: faster CPU convolutions on batches (bench/pipeline.py)
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.config, self.device, self.amp = config, device, amp
        if amp and not bf16_is_native(device):
            warnings.warn(f"bf16 is emulated on {device}: autocast will be slower than float32 here", stacklevel=2)
        self.use_spec(RunSpec.from_config(config))
        self.frame_hop = self.model.frontend.config.hop_length
        self.spectrogram_frontend = self.model.frontend

    @classmethod
    def for_model(cls, model: torch.nn.Module, clip_seconds: float | None = None) -> "Classifier":
        """A bare model (no run folder) as a classifier: labels ``"0"`` ... on the device its weights are on."""
        config = {"labels": [str(i) for i in range(model.num_classes)], "frontend": model.frontend.config.to_dict(),
                  "clip_seconds": clip_seconds, "task": "single_label"}
        return cls(model, config, next(model.parameters()).device)

    def clip_logits(self, clips) -> np.ndarray:
        return clip_logits(self.model, clips, self.clip_samples, device=self.device, amp=self.amp)

    def embeddings(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Clip embeddings ``(clips, num_features)`` of mono float32 clips at ``self.sample_rate``: the mean over
        each clip's half-overlapping windows of the features the head takes (:func:`forward_embeddings`)."""
        if getattr(self.model, "members", None) is not None:
            raise ValueError("an ensemble has no single embedding: embed with one of its members (RUN/member-1, ...)")
        forward = lambda batch: forward_embeddings(self.model, batch, self.device, self.amp)  # noqa: E731
        batch_size = inference_batch_size(self.model, self.clip_samples, self.device, self.amp)
        return window_average(clips, self.clip_samples, forward, self.model.num_features, batch_size)

    def logits(self, batch: np.ndarray, spectrogram: bool = False) -> np.ndarray:
        """Logits ``(batch, classes)`` of a batch of windows (:func:`forward_logits`), no window averaging."""
        return forward_logits(self.model, batch, self.device, self.amp, spectrogram)

    def window_logits(self, batch: np.ndarray, spectrogram: bool = False) -> np.ndarray:
        return self.logits(batch, spectrogram)

    def window_batch(self, samples: int) -> int:
        return inference_batch_size(self.model, samples, self.device, self.amp)


def load(run_dir, device: str = "cpu", amp: bool = False, fold_batchnorm: bool = True) -> Classifier:
    """Rebuild the classifier saved in ``run_dir`` (``model.safetensors`` + ``config.json``), or a pretrained one by
    its catalogue name (``load("mn04_as")``, :mod:`audioclf.weights`); ``amp``: bf16
    autocast in its forward passes (default float32). ``fold_batchnorm``: batch norms after convolutions folded
    into them (:func:`audioclf.models.fusion.fold_batchnorm`; faster, the same scores); False keeps them, for code
    that changes them (:mod:`audioclf.adaptation`)."""
    from .models.fusion import fold_batchnorm as fold
    from .weights import resolve_run

    from .devices import resolve_device
    device = str(resolve_device(device))
    model, config = load_run(resolve_run(run_dir), device)
    if fold_batchnorm:
        fold(model.eval())
    return Classifier(model, config, device, amp)
