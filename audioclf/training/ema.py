"""Exponential moving average of a model's weights, used for evaluation and the saved checkpoint."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every step; the buffers a checkpoint keeps (BN
    statistics) are copied. Non-persistent buffers (filter banks, the window, the noise bank) are constants of
    the front end and are not copied.

    The effective decay ramps up as ``(1 + step) / (10 + step)`` (an average over about the last 11% of the steps so
    far), so early averages are not stuck at init; ``decay`` only caps it (0.995 binds after 1,790 steps).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(model).eval()
        self.decay, self.steps = decay, 0
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._kept_buffers = set(self.module.state_dict()) & {name for name, _ in self.module.named_buffers()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for (name, ema_b), b in zip(self.module.named_buffers(), model.buffers()):
            if name in self._kept_buffers:
                ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"steps": self.steps, **{f"module.{k}": v for k, v in self.module.state_dict().items()}}
