"""Fixed-length windows over clips: numpy only (no torch), so the ONNX predictor can use them too."""
from __future__ import annotations

import numpy as np

__all__ = ["fit_length", "window_average", "window_starts", "windows"]


def fit_length(audio: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop or zero-pad ``(samples,)`` to ``length``: at a random offset when ``rng`` is given, centred otherwise."""
    n = len(audio)
    if n >= length:
        start = rng.integers(0, n - length + 1) if rng is not None else (n - length) // 2
        return np.array(audio[start:start + length], dtype=np.float32)  # a writable copy
    out = np.zeros(length, dtype=np.float32)
    start = rng.integers(0, length - n + 1) if rng is not None else (length - n) // 2
    out[start:start + n] = audio
    return out


def window_starts(n: int, length: int, hop: int | None = None) -> list[int]:
    """Start samples of :func:`windows` over ``n`` samples: every ``hop`` (default half a window), plus one window
    aligned to the end when the regular ones leave a tail; ``[0]`` when ``n <= length``."""
    if n <= length:
        return [0]
    hop = hop or max(1, length // 2)
    starts = list(range(0, n - length + 1, hop))
    if starts[-1] != n - length:
        starts.append(n - length)
    return starts


def windows(audio: np.ndarray, length: int, hop: int | None = None) -> np.ndarray:
    """Cover a whole clip with windows ``(n_windows, length)``; a short clip gives one centred window.

    ``hop`` defaults to half a window; the last window is aligned to the clip's end so nothing is left out.
    """
    if len(audio) <= length:
        return fit_length(audio, length)[None]
    return np.stack([np.asarray(audio[s:s + length], dtype=np.float32)
                     for s in window_starts(len(audio), length, hop)])


def window_average(clips, clip_samples: int, forward, num_classes: int, batch_size: int = 64) -> np.ndarray:
    """Whole-clip logits ``(clips, classes)``: each clip's half-overlapping :func:`windows` go through
    ``forward(batch (n, clip_samples)) -> (n, classes)`` in batches of ``batch_size``; their logits are averaged."""
    clips = list(clips)
    sums, counts = np.zeros((len(clips), num_classes)), np.zeros(len(clips))
    pending, owner = [], []

    def flush():
        np.add.at(sums, owner, forward(np.stack(pending)))
        np.add.at(counts, owner, 1)
        pending.clear()
        owner.clear()

    for i, clip in enumerate(clips):
        for w in windows(np.asarray(clip, np.float32), clip_samples):
            pending.append(w)
            owner.append(i)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return sums / np.maximum(counts, 1)[:, None]
