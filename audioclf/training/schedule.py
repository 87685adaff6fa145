"""Learning-rate schedules as pure functions of the step, and the rule that ends training from the validation curve."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def warmup_stable_decay(step: int, warmup_steps: int, decay_start: int | None, decay_steps: int, base_lr: float,
                        min_lr_ratio: float = 0.01) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, ``base_lr`` until ``decay_start`` (``None``: not decided
    yet), then a half cosine down to ``min_lr_ratio * base_lr`` over ``decay_steps``, held there after."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if decay_start is None or step < decay_start:
        return base_lr
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


DECAY_SHARE = 0.2  # the decay is this share of the whole run


@dataclass
class StopRule:
    """Ends training from the validation curve, with a ceiling. At an epoch's end the decay of
    :func:`warmup_stable_decay` starts once validation has not improved for ``patience`` epochs (and at least
    ``min_steps`` were taken), or when a later start could not finish by ``ceiling_steps``; it lasts
    ``DECAY_SHARE`` of the run (at least an epoch, at most what the ceiling leaves), and training ends with it."""

    ceiling_steps: int
    steps_per_epoch: int
    patience: int
    min_steps: int = 0
    decay_start: int | None = None
    decay_steps: int = 0

    def decay_length(self, step: int) -> int:
        """Steps of a decay that starts at ``step``: ``DECAY_SHARE`` of the run it ends, in whole epochs (one or
        more), not past the ceiling."""
        return min(self.planned_decay(step), max(0, self.ceiling_steps - step))

    def planned_decay(self, step: int) -> int:
        """``DECAY_SHARE`` of a run whose decay starts at ``step``, rounded up to whole epochs (at least one)."""
        return self.steps_per_epoch * max(1, math.ceil(step * DECAY_SHARE / (1 - DECAY_SHARE) / self.steps_per_epoch))

    def after_epoch(self, step: int, epochs_since_best: int) -> str | None:
        """Called at each epoch's end (``step`` optimiser steps taken so far); a line saying why the decay starts
        when it does, else ``None``."""
        if self.decay_start is not None:
            return None
        if epochs_since_best >= self.patience and step >= self.min_steps:
            why = f"no validation improvement for {epochs_since_best} epochs"
        elif step + self.planned_decay(step) >= self.ceiling_steps:
            why = f"the ceiling of {self.ceiling_steps} steps is near"
        else:
            return None
        self.decay_start, self.decay_steps = step, self.decay_length(step)
        return (f"learning-rate decay from step {step} over {self.decay_steps} steps "
                f"({self.decay_steps // self.steps_per_epoch} epochs), then the end: {why}")

    def finished(self, step: int) -> bool:
        return self.decay_start is not None and step >= self.decay_start + self.decay_steps

    def state(self) -> dict:
        return asdict(self)
