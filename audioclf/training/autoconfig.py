"""Data-driven defaults: look at the data set, pick sample rate, clip length, model size, epochs, batch size."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..audio import AudioDecodeError, audio_info
from ..data.manifest import Manifest

MAX_SAMPLE_RATE = 16000  # enough for speech and most environmental sound, and cheap on a CPU
PROBE_FILES = 300


@dataclass
class DataSummary:
    files: int
    classes: int
    sample_rate: int          # median native rate
    duration_p50: float       # seconds
    duration_p90: float
    imbalance: float          # largest class count / smallest

    def describe(self) -> str:
        return (f"{self.files} files, {self.classes} classes, native rate {self.sample_rate} Hz, "
                f"duration median {self.duration_p50:.2f} s / p90 {self.duration_p90:.2f} s, "
                f"class imbalance {self.imbalance:.1f}x")


def summarise(manifest: Manifest, seed: int = 0) -> DataSummary:
    """Read the headers of up to ``PROBE_FILES`` random files (cheap) and the class counts."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(manifest.items), size=min(PROBE_FILES, len(manifest.items)), replace=False)
    rates, durations = [], []
    for i in picks:
        try:
            info = audio_info(manifest.items[i].path)
        except AudioDecodeError:
            continue
        rates.append(info.sample_rate)
        durations.append(info.duration)
    if not rates:
        rates, durations = [MAX_SAMPLE_RATE], [1.0]
    counts = manifest.class_counts()
    return DataSummary(len(manifest.items), len(counts), int(np.median(rates)), float(np.median(durations)),
                       float(np.percentile(durations, 90)), max(counts.values()) / max(1, min(counts.values())))


def choose_sample_rate(summary: DataSummary) -> int:
    return min(summary.sample_rate, MAX_SAMPLE_RATE)


def choose_clip_seconds(summary: DataSummary) -> float:
    """The 90th-percentile duration, rounded up to 0.25 s, within [0.5, 10] s; longer clips are windowed."""
    return float(min(10.0, max(0.5, math.ceil(summary.duration_p90 * 4 - 1e-6) / 4)))


def choose_batch_size(train_files: int) -> int:
    return 32 if train_files < 2000 else 64


MAX_EPOCHS = 500  # bounds the per-epoch validation and checkpoint on a data set of a few dozen files


STEPS = 1000  # optimiser steps the automatic epochs aim at
MODEL_STEPS = {"crnn": 1800}  # models that converge slower: their automatic epochs aim at more steps (below)


def choose_epochs(train_files: int, batch_size: int, model: str = "cnn") -> int:
    """About ``STEPS`` optimiser steps (counting a last, partial batch, which the training loader drops) and at least
    10 epochs, at most ``MAX_EPOCHS``. A small data set needs the steps, however many epochs they take: FSDD's official
    split trained on 5% / 10% of its training clips (121 / 243 files) tested 60.0-62.3% / 89.0-89.7% after the 150 /
    350 steps that a cap of 50 epochs allowed, and 88.0-93.0% / 95.7-97.7% after 750 / 875 steps (250 / 125 epochs;
    ``python bench/small_data.py``).

    ``crnn`` (its GRU) aims at 1,800: after 1,000 steps its best epoch was the last or nearly (23-28 of 28, FSDD
    leave one speaker out) and its validation loss still falling; with 1,800 (50 epochs) the best epochs are 30-46
    and the held-out voices 2.8 +- 0.7 points more accurate (18 paired folds; docs/experiments.md)."""
    return _epochs_for(MODEL_STEPS.get(model, STEPS), train_files, batch_size)


FINETUNE_STEPS = 200  # optimiser steps the automatic epochs aim at when fine-tuning pretrained weights


def choose_finetune_epochs(train_files: int, batch_size: int) -> int:
    """About ``FINETUNE_STEPS`` optimiser steps, at least 10 epochs, at most ``MAX_EPOCHS``: a pretrained backbone
    needs a fraction of the steps that training from scratch takes."""
    return _epochs_for(FINETUNE_STEPS, train_files, batch_size)


def _epochs_for(steps: int, train_files: int, batch_size: int) -> int:
    steps_per_epoch = max(1, math.ceil(train_files / batch_size))
    return int(min(MAX_EPOCHS, max(10, round(steps / steps_per_epoch))))


def choose_model(train_files: int) -> tuple[str, dict]:
    """The compact CNN: on a CPU it trains faster to a better accuracy than the MobileNetV3-style model
    (dense 3x3 convs use the cores well, depthwise ones do not); wider when there is data to feed it."""
    return ("cnn", {"width": 1.0 if train_files < 20000 else 1.5})
