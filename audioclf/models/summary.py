"""Parameters and forward GFLOPs per second of audio for every registered model."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..features import FrontendConfig
from .registry import create_model, list_models


def forward_gflops(model: torch.nn.Module, sample_rate: int, seconds: float = 1.0) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) for ``seconds`` of audio, batch 1, eval mode."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, int(sample_rate * seconds)))
    return counter.get_total_flops() / 1e9


def model_table(sample_rate: int = 16000, num_classes: int = 10) -> str:
    lines = [f"{'model':<12}{'params (M)':>12}{'GFLOPs/s audio':>16}  description",
             f"{'':<12}{'':>12}{f'(at {sample_rate} Hz)':>16}"]
    from .registry import model_description
    for name in list_models():
        model = create_model(name, num_classes, FrontendConfig(sample_rate=sample_rate))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        doc = model_description(name)
        lines.append(f"{name:<12}{params:>12.2f}{forward_gflops(model, sample_rate):>16.3f}  {doc}")
    return "\n".join(lines)
