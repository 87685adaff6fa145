"""Score a model on labelled clips and write the report: report.json, confusion matrix CSV + PNG."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io_utils import write_json_atomic
from ..settings import AMP_HELP, CACHE_HELP, DEVICE_HELP, PATTERN_HELP, check_fields, option
from .metrics import classification_report, multilabel_report
from .plots import plot_confusion, write_confusion_csv


def build_report(scores: np.ndarray, targets: np.ndarray, labels: list[str], multilabel: bool,
                 thresholds: np.ndarray | None = None) -> dict:
    """scores: probabilities ``(n, classes)``; targets: multi-hot/one-hot ``(n, classes)``."""
    if multilabel:
        th = thresholds if thresholds is not None else np.full(len(labels), 0.5)
        return multilabel_report(targets.astype(int), scores, labels, th)
    return classification_report(targets.argmax(1), scores.argmax(1), labels)


def write_report(report: dict, out_dir, prefix: str = "") -> Path:
    """``report.json`` plus, for single-label reports, ``confusion_matrix.csv`` and ``.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{prefix}report.json", report)
    matrix = report.get("confusion_matrix")
    if matrix and isinstance(matrix[0], list) and len(matrix) == len(report["labels"]) and len(matrix[0]) == len(matrix):
        matrix = np.asarray(matrix)
        write_confusion_csv(matrix, report["labels"], out_dir / f"{prefix}confusion_matrix.csv")
        plot_confusion(matrix, report["labels"], out_dir / f"{prefix}confusion_matrix.png")
    return out_dir / f"{prefix}report.json"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_line(report: dict) -> str:
    if "mAP" in report:
        return f"mAP {_fmt(report['mAP'])}  macro-F1 {report['macro_f1']:.4f}  micro-F1 {report['micro_f1']:.4f}  (n={report['n']})"
    return (f"accuracy {report['accuracy']:.4f}  balanced accuracy {report['balanced_accuracy']:.4f}  "
            f"macro-F1 {report['macro_f1']:.4f}  (n={report['n']})")


def seen_clips(run) -> tuple[set[str], set[str]]:
    """Paths of the clips a run trained or validated on, and the digests of their audio (hex; none from a run that
    did not record them), from its ``split.csv`` (empty without one)."""
    path = Path(run) / "split.csv"
    if not path.is_file():
        return set(), set()
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row.get("subset") in ("train", "validation")]
    return {row["path"] for row in rows}, {row["audio_sha256"] for row in rows if row.get("audio_sha256")}


@dataclass
class EvaluateConfig:
    """``audioclf evaluate`` / :func:`evaluate` settings."""

    test_fold: str | None = option(None, "score only this declared fold (default: every file)")
    pattern: str | None = option(None, PATTERN_HELP)
    out: str | None = option(None, "report folder (default RUN/evaluation)")
    include_training_clips: bool = option(False, "also score the clips the run trained or validated on (left out "
                                                 "by default: they flatter)")
    cache_dir: str | None = option(None, CACHE_HELP)
    device: str = option("cpu", DEVICE_HELP)
    amp: bool = option(False, AMP_HELP)
    batch_size: int | None = option(None, "windows per forward pass (default: from the model and device)", min=1)


def leave_out(items: list, seen, what: str, run, data) -> list:
    """``items`` without those ``seen(item)`` says the run trained or validated on, with a warning naming ``what``
    they are; ``ValueError`` when none is left."""
    from ..weights import resolve_run

    kept = [it for it in items if not seen(it)]
    if len(kept) == len(items):
        return items
    print(f"warning: leaving out {len(items) - len(kept)} {what} ({Path(resolve_run(run)) / 'split.csv'}); "
          "--include-training-clips scores them too")
    if not kept:
        raise ValueError(f"{data}: every clip is one the run trained or validated on: evaluate on held-out data "
                         "(or pass --include-training-clips)")
    return kept


def evaluate(run, data, **settings) -> dict:
    """Evaluate the run on ``data`` (all of it, or its ``test_fold``); write the report to ``out``
    (default ``RUN/evaluation``). Files whose labels the run does not know are skipped with a warning, and so are
    the clips the run trained or validated on (its ``split.csv``) unless ``include_training_clips``.
    ``settings``: :class:`EvaluateConfig` fields."""
    cfg = EvaluateConfig(**settings)
    check_fields(cfg)
    test_fold, pattern, out, cache_dir = cfg.test_fold, cfg.pattern, cfg.out, cfg.cache_dir
    device, batch_size, amp, include_training_clips = cfg.device, cfg.batch_size, cfg.amp, cfg.include_training_clips
    from ..data.cache import AudioCache
    from ..data.duplicates import digest
    from ..data.manifest import Manifest, load_manifest
    from ..data.splits import label_matrix
    from ..inference import clip_logits, load, scores_from_logits
    from ..weights import resolve_run

    clf = load(run, device, amp)
    manifest = load_manifest(data, pattern)
    known = set(clf.labels)
    items = [it for it in manifest.items if test_fold is None or it.fold == str(test_fold)]
    if not items:
        raise ValueError(f"{data}: no items to evaluate" + (f" in fold {test_fold!r}" if test_fold else ""))
    unknown = [it for it in items if not set(it.labels) <= known]
    if unknown:
        names = sorted({l for it in unknown for l in it.labels} - known)
        print(f"warning: skipping {len(unknown)} file(s) with labels the model was not trained on: {', '.join(names[:10])}")
    items = [it for it in items if set(it.labels) <= known]
    if not items:
        raise ValueError(f"{data}: none of the files has a label the model knows ({', '.join(clf.labels[:10])} ...)")
    seen, seen_audio = (set(), set()) if include_training_clips else seen_clips(resolve_run(run))
    items = leave_out(items, lambda it: it.path in seen, "clip(s) the run trained or validated on", run, data)
    clips, bad = AudioCache(cache_dir, clf.sample_rate).load([it.path for it in items])
    for path, reason in bad:
        print(f"skipped {path}: {reason}")
    items = [it for it in items if it.path in clips]
    if seen_audio:  # copies under other names: the same decoded audio
        items = leave_out(items, lambda it: digest(clips[it.path]).hex() in seen_audio,
                          "clip(s) whose audio is identical to clips the run trained or validated on", run, data)
    targets = label_matrix(Manifest(items, manifest.root), clf.labels)
    logits = clip_logits(clf.model, [clips[it.path] for it in items], clf.clip_samples, batch_size, device, clf.amp)
    report = build_report(scores_from_logits(logits, clf.multilabel), targets, clf.labels, clf.multilabel,
                          clf.thresholds)
    report["skipped"] = len(bad) + len(unknown) + len(manifest.skipped)
    report["weights_sha256"] = clf.config["weights_sha256"]  # the weights this report describes, as loaded
    path = write_report(report, out or Path(run) / "evaluation")
    print(summary_line(report))
    print(f"report: {path}")
    return report
