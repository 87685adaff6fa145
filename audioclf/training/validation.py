"""Validation scores: what "best epoch" maximises, the per-clip scores a run keeps (``RUN/validation.csv``), and
paired comparisons of two runs on the same clips."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..io_utils import write_text_atomic

VALIDATION_NAME = "validation.csv"  # path, labels and per-class scores of the validation clips at the best epoch
BOOTSTRAP_DRAWS = 400


def selection_score(val_loss: float, metric: float, multilabel: bool) -> tuple[float, float]:
    """What "best epoch" maximises (compared as a tuple). Single-label: the validation cross-entropy first, accuracy
    breaking ties (accuracy moves in steps of one clip and saturates on a small validation set). Multi-label: mAP
    first (threshold-free and continuous), the loss breaking ties."""
    return (metric, -val_loss) if multilabel else (-val_loss, metric)


def write_validation(run: Path, paths: list[str], labels: list[str], targets: np.ndarray, scores: np.ndarray) -> None:
    """``RUN/validation.csv``: one row per validation clip, ``path``, ``labels`` (``;``-joined) and the score of
    each class; ``targets`` (clips, classes) 0/1, ``scores`` (clips, classes)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "labels", *labels])
    for path, t, row in zip(paths, targets, scores):
        writer.writerow([path, ";".join(labels[i] for i in np.flatnonzero(t)), *(f"{v:.6g}" for v in row)])
    write_text_atomic(Path(run) / VALIDATION_NAME, buf.getvalue())


def read_validation(run: Path) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """``(paths, targets (clips, classes), scores (clips, classes))`` from ``RUN/validation.csv``; None without it."""
    f = Path(run) / VALIDATION_NAME
    if not f.is_file():
        return None
    with open(f, newline="") as fh:
        rows = list(csv.reader(fh))
    labels = rows[0][2:]
    targets = np.array([[name in r[1].split(";") for name in labels] for r in rows[1:]], dtype=np.float64)
    return [r[0] for r in rows[1:]], targets.reshape(-1, len(labels)), np.array(
        [[float(v) for v in r[2:]] for r in rows[1:]]).reshape(-1, len(labels))


def accuracy(targets: np.ndarray, scores: np.ndarray) -> float:
    """Single-label accuracy: the top-scoring class is a target. ``(clips, classes)`` each."""
    return float(np.take_along_axis(targets, scores.argmax(1)[:, None], 1).mean())


def paired_z(metric, targets: np.ndarray, a: np.ndarray, b: np.ndarray, draws: int = BOOTSTRAP_DRAWS,
             seed: int = 0) -> tuple[float, float]:
    """``metric(a) - metric(b)`` on the same clips and that difference in standard errors of a paired bootstrap
    (clips resampled together for both): ``(difference, z)``; z is 0 when no resample tells them apart."""
    diff = metric(targets, a) - metric(targets, b)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(draws):
        i = rng.integers(0, len(targets), len(targets))
        boot.append(metric(targets[i], a[i]) - metric(targets[i], b[i]))
    sd = float(np.std(boot))
    return diff, (diff / sd if sd > 0 else 0.0)
