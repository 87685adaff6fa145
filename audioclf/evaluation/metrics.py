"""Classification metrics in pure numpy.

Every report is a JSON-serialisable dict of plain Python ``int``/``float`` values
(``None`` stands for an undefined value, e.g. the AP of a class without positives),
so ``json.dumps`` works and strict JSON parsers accept it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "classification_report",
    "average_precision",
    "multilabel_report",
    "tune_thresholds",
    "summarise_folds",
]


def _labels_1d(y: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} holds class indices outside [0, {num_classes})")
    return y


def _f(x) -> float | None:
    """Plain float, or None when undefined (nan)."""
    x = float(x)
    return None if math.isnan(x) else x


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts for single-label predictions.

    y_true, y_pred: (n,) integer class indices in [0, num_classes).
    Returns (num_classes, num_classes) int64; rows = true class, columns = predicted.
    """
    y_true = _labels_1d(y_true, num_classes, "y_true")
    y_pred = _labels_1d(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Single-label report.

    y_true, y_pred: (n,) class indices; labels: C class names (index -> name).
    Keys: "accuracy", "balanced_accuracy" (mean recall over classes with support),
    "macro_f1" (mean F1 over all C classes, 0 where undefined: sklearn
    ``f1_score(average="macro", labels=range(C), zero_division=0)``),
    "per_class" {label: {"precision", "recall", "f1", "support"}},
    "confusion_matrix" (C x C list of lists, rows = true), "labels", "n".
    """
    labels = [str(label) for label in labels]
    c = len(labels)
    cm = confusion_matrix(y_true, y_pred, c)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    has_support = support > 0
    return {
        "accuracy": _f(tp.sum() / n) if n else None,
        "balanced_accuracy": _f(recall[has_support].mean()) if has_support.any() else None,
        "macro_f1": _f(f1.mean()) if c else None,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": labels,
        "n": n,
    }


def _binary_inputs(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 1 or scores.ndim != 1 or y_true.shape != scores.shape:
        raise ValueError(f"expected two 1-D arrays of equal length, got {y_true.shape} and {scores.shape}")
    return (y_true > 0).astype(np.float64), scores


def _pr_steps(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tps, fps) at each distinct score, highest first, and those scores.

    Entry k counts examples with score >= the k-th largest distinct score.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = y_true[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return tps, fps, s[last]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of a binary ranking, step-wise (no interpolation).

    y_true: (n,) 0/1 (anything > 0 is positive); scores: (n,) higher = more positive.
    AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds, as
    ``sklearn.metrics.average_precision_score``. nan when there are no positives.
    """
    y_true, scores = _binary_inputs(y_true, scores)
    if y_true.size == 0 or y_true.sum() == 0:
        return float("nan")
    tps, fps, _ = _pr_steps(y_true, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean of :func:`average_precision` over the classes with a positive; 0.0 when none has one.
    ``(n, classes)`` each."""
    aps = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1]) if (y_true[:, c] > 0).any()]
    return float(np.mean(aps)) if aps else 0.0


def _multilabel_inputs(y_true, scores, num_labels=None):
    y_true = (np.asarray(y_true) > 0).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"expected y_true and scores of equal shape (n, classes), got {y_true.shape} and {scores.shape}")
    if num_labels is not None and y_true.shape[1] != num_labels:
        raise ValueError(f"{num_labels} labels but {y_true.shape[1]} score columns")
    return y_true, scores


def multilabel_report(
    y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str], thresholds: np.ndarray
) -> dict:
    """Multi-label report.

    y_true: (n, C) 0/1; scores: (n, C) probabilities; labels: C names;
    thresholds: (C,) — class c is predicted when scores[:, c] >= thresholds[c].
    Keys: "mAP" (mean AP over classes with positives; None if none),
    "per_class" {label: {"ap" (None without positives), "precision", "recall", "f1",
    "support", "threshold"}}, "macro_f1" (mean over all C, 0 where undefined),
    "micro_f1", "accuracy" (exact-match / subset accuracy), "balanced_accuracy"
    (mean recall over classes with positives), "confusion_matrix" (C lists
    [tn, fp, fn, tp]), "labels", "n".
    """
    labels = [str(label) for label in labels]
    y_true, scores = _multilabel_inputs(y_true, scores, len(labels))
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.shape != (len(labels),):
        raise ValueError(f"thresholds must have shape ({len(labels)},), got {thresholds.shape}")
    n = int(y_true.shape[0])
    y_pred = (scores >= thresholds[None, :]).astype(np.int64)

    tp = (y_pred & y_true).sum(axis=0)
    fp = (y_pred & (1 - y_true)).sum(axis=0)
    fn = ((1 - y_pred) & y_true).sum(axis=0)
    tn = n - tp - fp - fn
    support = tp + fn
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    ap = np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(len(labels))])
    has_pos = support > 0
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()

    return {
        "mAP": _f(ap[has_pos].mean()) if has_pos.any() else None,
        "macro_f1": _f(f1.mean()) if labels else None,
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "accuracy": _f(np.all(y_pred == y_true, axis=1).mean()) if n else None,
        "balanced_accuracy": _f(recall[has_pos].mean()) if has_pos.any() else None,
        "per_class": {
            label: {
                "ap": _f(ap[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "threshold": float(thresholds[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": [[int(tn[i]), int(fp[i]), int(fn[i]), int(tp[i])] for i in range(len(labels))],
        "labels": labels,
        "n": n,
    }


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class decision thresholds maximising F1 on these data.

    y_true: (n, C) 0/1; scores: (n, C). Returns (C,) float64 thresholds for the rule
    ``scores >= threshold``. Candidates are midpoints between consecutive distinct
    scores (and the lowest score itself); ties in F1 go to the higher threshold.
    A class with no positives gets 0.5.
    """
    y_true, scores = _multilabel_inputs(y_true, scores)
    out = np.full(y_true.shape[1], 0.5, dtype=np.float64)
    for c in range(y_true.shape[1]):
        y = y_true[:, c].astype(np.float64)
        positives = y.sum()
        if positives == 0:
            continue
        tps, fps, distinct = _pr_steps(y, scores[:, c])
        f1 = 2 * tps / (tps + fps + positives)  # 2tp / (2tp + fp + fn)
        k = int(np.argmax(f1))
        if k + 1 < distinct.size:
            mid = 0.5 * (distinct[k] + distinct[k + 1])
            # guard against rounding onto the next-lower score (adjacent floats)
            out[c] = mid if distinct[k + 1] < mid <= distinct[k] else distinct[k]
        else:
            out[c] = distinct[k]
    return out


def summarise_folds(reports: Sequence[dict]) -> dict:
    """Mean and population std (ddof=0) of fold metrics.

    reports: per-fold dicts from classification_report / multilabel_report.
    Returns {"mean_accuracy", "std_accuracy", "mean_macro_f1", "std_macro_f1"}, plus
    "mean_mAP" and "std_mAP" when any report has a mAP, and "n_folds". Missing or
    None values are skipped; a metric with no values gets None.
    """
    out: dict = {}
    for key in ("accuracy", "macro_f1", "mAP"):
        values = [r[key] for r in reports if r.get(key) is not None]
        if key == "mAP" and not values:
            continue
        arr = np.asarray(values, dtype=np.float64)
        out[f"mean_{key}"] = float(arr.mean()) if arr.size else None
        out[f"std_{key}"] = float(arr.std(ddof=0)) if arr.size else None
    out["n_folds"] = len(reports)
    return out
