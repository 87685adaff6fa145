"""Fixed-length training examples from clips of any length, and whole-clip evaluation windows."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .windows import fit_length, windows  # noqa: F401  (re-exported; numpy-only module)

__all__ = ["ClipDataset", "fit_length", "windows"]


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
