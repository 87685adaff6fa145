"""Data-parallel training helpers: one process per device, started by ``torchrun`` (or ``audioclf train --nproc N``).

A process is distributed when ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are in its environment (torchrun sets
them). Without them everything here is a no-op for a single process, so the trainer calls these helpers
unconditionally. Rank 0 is the *main* process: it alone prints and writes files.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def setup_from_env(device: str = "auto") -> tuple[DistInfo, torch.device | None]:
    """Join the process group described by torchrun's environment variables, if there is one.

    Returns the rank info and, when distributed on GPUs, this process's device ``cuda:LOCAL_RANK`` (else ``None``:
    the caller keeps its own device choice). Non-main ranks get a silent stdout (stderr still shows errors).
    """
    global _INFO
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        _INFO = DistInfo()
        return _INFO, None
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    cuda = uses_gpus(device, int(os.environ.get("LOCAL_WORLD_SIZE", info.local_rank + 1)))
    dev = None
    if cuda:
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    _INFO = info
    if not info.main:
        sys.stdout = open(os.devnull, "w")
    return info, dev


def uses_gpus(device: str, nproc: int) -> bool:
    """Whether ``nproc`` processes on this machine each take a GPU (``device`` auto or cuda, GPUs present); raises
    ValueError when there are fewer GPUs than processes (NCCL cannot put two ranks on one GPU)."""
    if device == "cpu" or not torch.cuda.is_available():
        return False
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise ValueError(f"{nproc} processes on this machine need {nproc} GPUs (one each) and it has {gpus}: "
                         f"start at most {gpus} (--nproc / --nproc_per_node), or pass --device cpu for CPU processes")
    return True


def launch_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without one), readable before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def info() -> DistInfo:
    return _INFO


def is_main() -> bool:
    return _INFO.main


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. fills a cache); the others wait, then run it (and read the result)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_mean(value: float) -> float:
    """Mean of a Python number over all ranks (the number itself when not distributed)."""
    if not dist.is_initialized():
        return float(value)
    backend_cuda = dist.get_backend() == "nccl"
    t = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if backend_cuda else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (so every rank takes the same decisions)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """End of a run on every rank: wait for all, free what holds the group (a DDP reducer and its pending work, which
    the caller has dropped), then destroy the group, so that no collective's thread or buffer outlives it into the
    interpreter's exit."""
    if not dist.is_initialized():
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


class DistributedEpochSampler(DistributedSampler):
    """A :class:`DistributedSampler` (shuffled by ``(seed, epoch)``) whose ``set_epoch`` also takes ``start``, the
    number of *global* examples already done this epoch (a resumed run skips this rank's share of them)."""

    def __init__(self, dataset, seed: int = 0, drop_last: bool = False):
        super().__init__(dataset, shuffle=True, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start // self.num_replicas

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
