"""``--device`` names: checked before any work, so an unavailable device is one line, not a traceback later."""
from __future__ import annotations

import re

import torch

_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, flag: str = "--device") -> None:
    """``ValueError`` unless ``name`` is auto, cpu, cuda, cuda:N or mps and this machine has it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{flag} {name}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{flag} {name}: {why} (torch {torch.__version__}); use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} mps: the Metal (MPS) back end is not available here; use --device cpu")


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU where there is one, else the CPU; any other name as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
