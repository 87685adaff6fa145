"""Inference on clips and files: whole-clip window averaging, probabilities, top-k labels.

``load(RUN)`` rebuilds a trained model from its run folder (safetensors + JSON, nothing executed).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .checkpoint import load_run
from .data.windows import window_average
from .predictions import Predictor, scores_from_logits  # noqa: F401  (re-exported)


CPU_BATCH_CELLS = 60_000  # mel bins x frames per forward pass on a CPU (see inference_batch_size)


def inference_batch_size(model: torch.nn.Module, samples: int, device: str | torch.device = "cpu") -> int:
    """Windows of ``samples`` per forward pass: 64 on an accelerator; on a CPU as many as make about
    ``CPU_BATCH_CELLS`` mel x frame cells, so the activations stay in cache. Measured with the default ``cnn``
    (64 mels, 0.75 s at 8 kHz: 76 frames, 4,864 cells) on the 2-core machine, ms a window: on 2 threads 0.42-0.43
    for batches of 8-12, 0.73-0.74 for 16-20 (another day: 0.44 at 16, 0.78 at 32, so the cliff moves with the
    machine's load); on 1 thread 0.73-0.76 for 12-20, 1.29 for 32. 60k cells (12 such windows) stays clear of
    it."""
    config = getattr(getattr(model, "frontend", None), "config", None)
    if torch.device(device).type != "cpu" or config is None:
        return 64
    return max(1, min(64, CPU_BATCH_CELLS // (config.n_mels * config.frames(samples))))


@torch.no_grad()
def clip_logits(model: torch.nn.Module, clips: Sequence[np.ndarray], clip_samples: int, batch_size: int | None = None,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Logits ``(clips, classes)``: each clip is covered by half-overlapping windows whose logits are averaged.
    ``batch_size``: windows per forward pass (default :func:`inference_batch_size`)."""
    batch_size = batch_size or inference_batch_size(model, clip_samples, device)
    model.eval()
    forward = lambda batch: model(torch.from_numpy(batch).to(device)).float().cpu().numpy()  # noqa: E731
    return window_average(clips, clip_samples, forward, model.num_classes, batch_size)


class Classifier(Predictor):
    """A trained model with its labels and audio settings. Build with :func:`load`."""

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu"):
        # channels-last activations: the CPU convolutions run ~1.5x faster on batches (bench/pipeline.py)
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.config, self.device = config, device
        self.labels: list[str] = config["labels"]
        self.sample_rate: int = config["frontend"]["sample_rate"]
        self.clip_samples = int(round(config["clip_seconds"] * self.sample_rate))
        self.multilabel = config.get("task") == "multi_label"
        self.thresholds = np.asarray(config.get("thresholds") or [0.5] * len(self.labels))

    def clip_logits(self, clips) -> np.ndarray:
        return clip_logits(self.model, clips, self.clip_samples, device=self.device)


def load(run_dir, device: str = "cpu") -> Classifier:
    """Rebuild the classifier saved in ``run_dir`` (``model.safetensors`` + ``config.json``)."""
    model, config = load_run(run_dir, device)
    return Classifier(model, config, device)
