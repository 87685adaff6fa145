"""Evaluation plots (PNG) and confusion-matrix CSV, all written atomically.

matplotlib is imported lazily inside the functions, with the non-interactive Agg
backend selected at call time, so importing this module is cheap.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

import numpy as np

__all__ = ["plot_confusion", "plot_curves", "write_confusion_csv"]


def _figure(figsize):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save_png(fig, path) -> None:
    from audioclf.io_utils import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_atomic(path, buf.getvalue())


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path) -> None:
    """Heat map of a (C, C) confusion matrix (rows = true) written as PNG to ``path``.

    Colours are row-normalised (per-class recall); raw counts are printed in the cells
    when C <= 30. The title shows the overall accuracy.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    labels = [str(label) for label in labels]
    c = len(labels)
    if cm.shape != (c, c):
        raise ValueError(f"matrix shape {cm.shape} does not match {c} labels")
    total = cm.sum()
    accuracy = float(np.trace(cm) / total) if total else float("nan")
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)

    side = min(max(4.0, 0.45 * c + 2.5), 30.0)
    fig = _figure((side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")

    tick_size = 9 if c <= 20 else max(4, int(9 - (c - 20) / 10))
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticklabels(labels, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (n={int(total)}, accuracy={accuracy:.3f})")

    if c <= 30:
        text_size = 9 if c <= 10 else (7 if c <= 20 else 5)
        for i in range(c):
            for j in range(c):
                ax.text(
                    j, i, f"{int(round(cm[i, j]))}",
                    ha="center", va="center", fontsize=text_size,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    _save_png(fig, path)


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    """Float column from metrics rows; missing, None, "" or unparsable -> nan."""
    out = []
    for row in rows:
        value = row.get(key)
        try:
            out.append(float(value) if value not in (None, "") else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def plot_curves(rows: Sequence[dict], path) -> None:
    """Training curves from metrics rows (as read from metrics.csv) written as PNG.

    rows: dicts with keys epoch, train_loss, val_loss, val_accuracy and/or val_mAP, lr
    (values may be numbers, numeric strings, None or missing). Left panel: losses vs
    epoch. Right panel: validation metric(s) vs epoch, learning rate on a twin axis.
    """
    rows = list(rows)
    epochs = _column(rows, "epoch")
    if np.isnan(epochs).all():
        epochs = np.arange(1, len(rows) + 1, dtype=np.float64)

    fig = _figure((11.0, 4.2))
    ax_loss, ax_metric = fig.subplots(1, 2)

    def plot(ax, key, label, **kw):
        y = _column(rows, key)
        ok = ~np.isnan(y) & ~np.isnan(epochs)
        if ok.any():
            ax.plot(epochs[ok], y[ok], marker="o", markersize=3, label=label, **kw)
            return True
        return False

    any_loss = plot(ax_loss, "train_loss", "train loss")
    any_loss |= plot(ax_loss, "val_loss", "val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    if any_loss:
        ax_loss.legend(loc="best")

    handles = []
    for key, label, colour in (("val_accuracy", "val accuracy", "tab:green"), ("val_mAP", "val mAP", "tab:purple")):
        if plot(ax_metric, key, label, color=colour):
            handles.append(ax_metric.lines[-1])
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation metric")
    ax_metric.set_title("Validation")
    ax_metric.grid(alpha=0.3)

    lr = _column(rows, "lr")
    ok = ~np.isnan(lr) & ~np.isnan(epochs)
    if ok.any():
        ax_lr = ax_metric.twinx()
        (line,) = ax_lr.plot(epochs[ok], lr[ok], color="tab:gray", linestyle="--", label="lr")
        if (lr[ok] > 0).all() and lr[ok].max() / lr[ok].min() > 10:
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
        handles.append(line)
    if handles:
        ax_metric.legend(handles=handles, labels=[h.get_label() for h in handles], loc="best")
    _save_png(fig, path)


def write_confusion_csv(matrix: np.ndarray, labels: Sequence[str], path) -> None:
    """Write a (C, C) confusion matrix as CSV: header ``true\\pred,<labels...>``,
    then one row per true label (label followed by its counts)."""
    cm = np.asarray(matrix)
    labels = [str(label) for label in labels]
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix shape {cm.shape} does not match {len(labels)} labels")
    from audioclf.io_utils import write_atomic

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true\\pred", *labels])
    for label, row in zip(labels, cm.tolist()):
        writer.writerow([label, *(int(v) if float(v).is_integer() else v for v in row)])
    write_atomic(path, buf.getvalue().encode("utf-8"))
