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
STEPS = 1000  # optimiser steps a from-scratch model typically needs; the ceiling is CEILING times more
MODEL_STEPS = {"crnn": 1800}  # models that converge slower (the GRU)
FINETUNE_STEPS = 200  # ... and a pretrained backbone, fine-tuned
CEILING = 3  # with validation data, training may run this many times the typical steps before it must end
PATIENCE_SHARE = 0.2  # epochs without improvement before the decay: this share of the typical steps (3 epochs or more)


def target_steps(model: str, finetune: bool = False) -> int:
    """The optimiser steps a model typically needs: ``FINETUNE_STEPS`` from pretrained weights, else ``STEPS``
    (``MODEL_STEPS`` for the slower ones)."""
    return FINETUNE_STEPS if finetune else MODEL_STEPS.get(model, STEPS)


def choose_epochs(train_files: int, batch_size: int, model: str = "cnn", finetune: bool = False,
                  validated: bool = True) -> int:
    """The epoch ceiling: ``CEILING`` times :func:`target_steps` (once, without validation data to stop on),
    counting a last, partial batch, which the training loader drops; at least 10 epochs, at most ``MAX_EPOCHS``.
    Training normally ends earlier, when validation stops improving (:class:`~audioclf.training.schedule.StopRule`)."""
    steps = target_steps(model, finetune) * (CEILING if validated else 1)
    steps_per_epoch = max(1, math.ceil(train_files / batch_size))
    return int(min(MAX_EPOCHS, max(10, round(steps / steps_per_epoch))))


def choose_patience(target: int, steps_per_epoch: int) -> int:
    """Epochs without validation improvement before the learning rate decays: ``PATIENCE_SHARE`` of the ``target``
    steps, at least 3 epochs, so a noisy validation curve does not end a run that is still learning."""
    return max(3, math.ceil(PATIENCE_SHARE * target / max(1, steps_per_epoch)))


def choose_model(train_files: int) -> tuple[str, dict]:
    """The compact CNN: on a CPU it trains faster to a better accuracy than the MobileNetV3-style model
    (dense 3x3 convs use the cores well, depthwise ones do not); wider when there is data to feed it."""
    return ("cnn", {"width": 1.0 if train_files < 20000 else 1.5})


def choose_augmentation(augment, level_norm: bool | None, given: set[str], train: tuple[list, np.ndarray],
                        val: tuple[list, np.ndarray], classes: int, sample_rate: int, seed: int = 0):
    """Switch off the settings that would erase a cue the labels live in (:mod:`~audioclf.training.cues`), unless
    the user set them (``given``: ``--aug`` keys; ``level_norm`` not ``None``). ``train``/``val``: (clips, class ids),
    single-label. Returns ``(AugmentConfig, level_norm, {setting: reason})``; the reasons name every cue probed."""
    from .cues import PROBE_CLIPS, augment_policy, clip_cues, probe

    if not val[0] or len(set(val[1].tolist())) < 2:
        return augment, True if level_norm is None else level_norm, {
            "level_norm=on": "too few validation classes to probe the cues"}
    rng = np.random.default_rng(seed)

    def cues(clips, y):
        pick = rng.permutation(len(clips))[:PROBE_CLIPS]
        return np.array([clip_cues(clips[i], sample_rate) for i in pick]), y[pick]
    (xt, yt), (xv, yv) = cues(*train), cues(*val)
    probed = probe(xt, yt, xv, yv, classes, augment.gain_db, augment.speed, augment.stretch, augment.fb_jitter, seed)
    off = {k: v for k, v in augment_policy(probed).items() if k not in given and not (k == "level_norm" and level_norm is not None)}
    reasons = {f"{k}=off" if k == "level_norm" else f"{k}=0": v for k, v in off.items()}
    told = ", ".join(f"{c.name} {100 * c.clean:.0f}%" for c in probed)
    reasons["cues"] = f"balanced validation accuracy from each cue alone: {told} (chance {100 / classes:.0f}%)"
    if level_norm is None and "level_norm" not in off:
        reasons["level_norm=on"] = "level does not tell the labels apart (gain-independent predictions)"
    values = {k: 0.0 for k in off if k != "level_norm"}
    if values:
        augment = type(augment)(**{**augment.to_dict(), **values})
    return augment, ("level_norm" not in off) if level_norm is None else level_norm, reasons
