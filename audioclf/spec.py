"""``RunSpec``: what a trained run answers with (labels, task, audio rate, window, thresholds), read once from its
``config.json`` or its ONNX export's metadata. numpy-free and torch-free."""
from __future__ import annotations

from dataclasses import dataclass


def clip_samples(clip_seconds: float, sample_rate: int) -> int:
    """Samples in a window of ``clip_seconds`` at ``sample_rate`` Hz (one at least)."""
    return max(1, int(round(clip_seconds * sample_rate)))


@dataclass(frozen=True)
class RunSpec:
    labels: tuple[str, ...]
    sample_rate: int  # Hz: the rate the model takes
    clip_seconds: float | None  # the training window; None for a bare model
    multilabel: bool
    thresholds: tuple[float, ...] | None = None  # per label (multi-label runs), tuned on validation

    @property
    def clip_samples(self) -> int | None:
        return None if self.clip_seconds is None else clip_samples(self.clip_seconds, self.sample_rate)

    @classmethod
    def from_config(cls, config: dict) -> "RunSpec":
        """From a run's ``config.json`` (the rate under ``frontend``) or an ONNX export's metadata (at the top)."""
        rate = config.get("sample_rate") or config["frontend"]["sample_rate"]
        seconds = config.get("clip_seconds")
        thresholds = config.get("thresholds")
        return cls(tuple(config["labels"]), int(rate), None if seconds is None else float(seconds),
                   config.get("task") == "multi_label", None if thresholds is None else tuple(thresholds))
