"""Batch orders that depend only on ``(seed, epoch)``, so a run resumes mid-epoch exactly, and the per-step seed."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled indices whose order depends only on ``(seed, epoch)``; starts ``start`` indices in (resume)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start)


class GroupBatchSampler(EpochSampler):
    """:class:`EpochSampler` whose every run of ``batch`` consecutive indices comes from one group: each group's
    indices are shuffled and cut into whole batches (the remainder, different each epoch, is left out), and the
    batches are shuffled, all from ``(seed, epoch)``. Batch norms then learn each group's own statistics, as
    camera-based batch norm does for new cameras (Zhuang et al. 2020): a model adapted to a new group's statistics
    (:mod:`audioclf.adaptation`) sees inputs normalised as in training."""

    def __init__(self, groups: list, batch: int, seed: int):
        super().__init__(len(groups), seed)
        self.batch = batch
        members: dict = {}
        for i, g in enumerate(groups):  # one pass: many groups cost no more than a few
            members.setdefault(g, []).append(i)
        self.by_group = {g: np.asarray(members[g]) for g in sorted(members, key=str)}
        small = sorted(str(g) for g, idx in self.by_group.items() if len(idx) < batch)
        if small:
            raise ValueError(f"--group-batches: {len(small)} group(s) have fewer than a batch ({batch}) of training "
                             f"clips: {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}")
        self.total = sum(len(idx) // batch * batch for idx in self.by_group.values())

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        batches = []
        for idx in self.by_group.values():
            order = rng.permutation(idx)
            batches += np.split(order[:len(order) // self.batch * self.batch], len(order) // self.batch)
        order = np.concatenate([batches[j] for j in rng.permutation(len(batches))])
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def seed_step(seed: int, step: int) -> None:
    """Reseed torch's global generator (CPU and CUDA) from ``(seed, step)``: a step's randomness needs no saved state."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1))
