"""From logits to answers, shared by every back end (PyTorch and ONNX). numpy only: never imports torch."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .audio import read_audio


def scores_from_logits(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax for single-label runs, sigmoid for multi-label ones. ``(n, classes)``."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Answers for clips. Subclasses set ``labels``, ``sample_rate``, ``clip_samples``, ``multilabel``,
    ``thresholds`` and implement ``clip_logits(clips) -> (clips, classes)`` (whole-clip window averaging)."""

    labels: list[str]
    sample_rate: int
    clip_samples: int
    multilabel: bool
    thresholds: np.ndarray

    def clip_logits(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def scores(self, audio: Iterable) -> np.ndarray:
        """Probabilities ``(n, classes)`` for file paths or mono float arrays at ``self.sample_rate``."""
        clips = [read_audio(a, self.sample_rate)[0] if isinstance(a, (str, Path)) else np.asarray(a, np.float32)
                 for a in audio]
        return scores_from_logits(self.clip_logits(clips), self.multilabel)

    def predict(self, audio, top_k: int = 5) -> list[dict] | list[list[dict]]:
        """For each input, ``[{"label", "score"}]``, best first (:meth:`ranked`). ``audio``: a path, an array, or a
        list of them."""
        single = isinstance(audio, (str, Path)) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
        results = [self.ranked(row, top_k) for row in self.scores([audio] if single else audio)]
        return results[0] if single else results

    def ranked(self, row: np.ndarray, top_k: int = 5) -> list[dict]:
        """One clip's scores ``(classes,)`` -> ``[{"label", "score"}]``, best first: the ``top_k`` best, and for a
        multi-label run also every further label at or above its threshold."""
        order = np.argsort(-row, kind="stable")  # ties keep label order
        if self.multilabel:
            order = [i for rank, i in enumerate(order) if rank < top_k or row[i] >= self.thresholds[i]]
        else:
            order = order[:top_k]
        return [{"label": self.labels[i], "score": float(row[i])} for i in order]
