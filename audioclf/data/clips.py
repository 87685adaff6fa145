"""Fixed-length training examples from clips of any length, and whole-clip evaluation windows."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


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


def windows(audio: np.ndarray, length: int, hop: int | None = None) -> np.ndarray:
    """Cover a whole clip with windows ``(n_windows, length)``; a short clip gives one centred window.

    ``hop`` defaults to half a window; the last window is aligned to the clip's end so nothing is left out.
    """
    n = len(audio)
    if n <= length:
        return fit_length(audio, length)[None]
    hop = hop or max(1, length // 2)
    starts = list(range(0, n - length + 1, hop))
    if starts[-1] != n - length:
        starts.append(n - length)
    return np.stack([np.asarray(audio[s:s + length], dtype=np.float32) for s in starts])


class ClipDataset(Dataset):
    """``(waveform (clip_samples,), target)`` pairs; random crop/pad placement when ``train``, centred otherwise.

    targets: ``(items, classes)`` float32 (multi-hot, or one-hot for single-label data).
    """

    def __init__(self, clips: list[np.ndarray], targets: np.ndarray, clip_samples: int, train: bool, seed: int = 0):
        self.clips, self.targets, self.clip_samples, self.train = clips, targets, clip_samples, train
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.train else None
        return torch.from_numpy(fit_length(self.clips[i], self.clip_samples, rng)), torch.from_numpy(self.targets[i])
