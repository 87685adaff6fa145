"""Inference on clips and files: whole-clip window averaging, probabilities, top-k labels.

``load(RUN)`` rebuilds a trained model from its run folder (safetensors + JSON, nothing executed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .audio import read_audio
from .checkpoint import load_run
from .data.clips import windows


@torch.no_grad()
def clip_logits(model: torch.nn.Module, clips: Sequence[np.ndarray], clip_samples: int, batch_size: int = 64,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Logits ``(clips, classes)``: each clip is covered by half-overlapping windows whose logits are averaged."""
    model.eval()
    owner, pending = [], []
    sums, counts = None, np.zeros(len(clips))

    def flush():
        nonlocal sums, pending, owner
        logits = model(torch.from_numpy(np.stack(pending)).to(device)).float().cpu().numpy()
        if sums is None:
            sums = np.zeros((len(clips), logits.shape[1]))
        np.add.at(sums, owner, logits)
        np.add.at(counts, owner, 1)
        pending, owner = [], []

    for i, clip in enumerate(clips):
        for w in windows(clip, clip_samples):
            pending.append(w)
            owner.append(i)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    if sums is None:
        return np.zeros((0, getattr(model, "num_classes", 0)))
    return sums / counts[:, None]


def scores_from_logits(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax for single-label runs, sigmoid for multi-label ones. ``(n, classes)``."""
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classifier:
    """A trained model with its labels and audio settings. Build with :func:`load`."""

    def __init__(self, model: torch.nn.Module, config: dict, device: str = "cpu"):
        self.model, self.config, self.device = model.to(device).eval(), config, device
        self.labels: list[str] = config["labels"]
        self.sample_rate: int = config["frontend"]["sample_rate"]
        self.clip_samples = int(round(config["clip_seconds"] * self.sample_rate))
        self.multilabel = config.get("task") == "multi_label"
        self.thresholds = np.asarray(config.get("thresholds") or [0.5] * len(self.labels))

    def scores(self, audio: Iterable) -> np.ndarray:
        """Probabilities ``(n, classes)`` for file paths or mono float arrays at ``self.sample_rate``."""
        clips = [read_audio(a, self.sample_rate)[0] if isinstance(a, (str, Path)) else np.asarray(a, np.float32)
                 for a in audio]
        return scores_from_logits(clip_logits(self.model, clips, self.clip_samples, device=self.device), self.multilabel)

    def predict(self, audio, top_k: int = 5) -> list[list[dict]]:
        """For each input, ``[{"label", "score"}]``: top-k (single-label) or every label above its threshold
        (multi-label), best first. ``audio``: a path, an array, or a list of them."""
        single = isinstance(audio, (str, Path)) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
        scores = self.scores([audio] if single else audio)
        results = []
        for row in scores:
            order = np.argsort(-row)
            if self.multilabel:
                order = [i for i in order if row[i] >= self.thresholds[i]]
            else:
                order = order[:top_k]
            results.append([{"label": self.labels[i], "score": float(row[i])} for i in order])
        return results[0] if single else results


def load(run_dir, device: str = "cpu") -> Classifier:
    """Rebuild the classifier saved in ``run_dir`` (``model.safetensors`` + ``config.json``)."""
    model, config = load_run(run_dir, device)
    return Classifier(model, config, device)
