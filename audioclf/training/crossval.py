"""K-fold cross-validation: declared folds, or stratified group-aware folds; one run folder per fold."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..adaptation import adapted_test_report, check_adaptable
from ..data.manifest import load_manifest
from ..data.splits import declared_cv_folds, kfold
from ..evaluation.metrics import summarise_folds
from ..evaluation.plots import plot_confusion, write_confusion_csv
from ..io_utils import write_json_atomic, write_text_atomic
from ..models import create_model
from .autoconfig import choose_model
from .config import TrainConfig
from .trainer import train


def cross_validate(data, out, folds: int = 5, adapt: int = 0, **settings) -> dict:
    """Train and test once per fold; write ``OUT/cv_report.json`` and the summed confusion matrix.

    ``adapt``: also measure unsupervised adaptation to each test fold (:func:`adapted_test_report`): that many of
    its clips, labels unused, adapt the fold's model; the report's ``adapted`` entry scores the others before and
    after, and the summary gains ``adapted_mean_accuracy`` (or ``adapted_mean_mAP``) and its ``_before``."""
    out = Path(out)
    manifest = load_manifest(data, settings.get("pattern")).require_classes()
    fold_tests = kfold(manifest, folds, settings.get("seed", 0))
    declared = declared_cv_folds(manifest)  # kfold's test folds, when the data declares them
    names = declared or [str(k) for k in range(len(fold_tests))]
    if adapt and min(map(len, fold_tests)) <= adapt:
        raise ValueError(f"--adapt {adapt}: a test fold has only {min(map(len, fold_tests))} clip(s); adapting "
                         "needs more, so that some are left to score")
    if adapt:  # a model that cannot be adapted is refused before any training
        for model in TrainConfig(**settings).model_names() or [choose_model(len(manifest.items))[0]]:
            check_adaptable(create_model(model, 2))
    if settings.get("noise_dir") is None and manifest.noise_dir:
        settings["noise_dir"] = manifest.noise_dir  # the fold CSVs below do not carry the data set's noise folder
    out.mkdir(parents=True, exist_ok=True)
    source = "declared folds" if declared else f"stratified{' group-aware' if manifest.has_groups else ''} {folds}-fold"
    print(f"cross-validation: {len(fold_tests)} folds ({source})")
    # each fold is a CSV manifest whose fold column marks the test items, so train() splits it like any data set
    reports = []
    for name, test in zip(names, fold_tests):
        test = set(test)
        csv_path = out / f"fold-{name}.csv"
        buf = io.StringIO()
        buf.write("path,label,group,fold\n")
        for i, it in enumerate(manifest.items):
            cells = [it.path, ";".join(it.labels), it.group or "", "test" if i in test else "train"]
            buf.write(",".join('"' + c.replace('"', '""') + '"' for c in cells) + "\n")
        write_text_atomic(csv_path, buf.getvalue())
        print(f"--- fold {name}: {len(test)} test files")
        fold_settings = {**settings, "pattern": None, "test_fold": "test"}
        report = train(csv_path, out / f"fold-{name}", **fold_settings)
        report["fold"] = name
        if adapt:
            report["adapted"] = adapted_test_report(out / f"fold-{name}", [manifest.items[i] for i in sorted(test)],
                                                    adapt, settings.get("cache_dir"), settings.get("seed", 0))
            print(f"fold {name}, adapted to {adapt} unlabelled test clips: {_before_after(report['adapted'])}")
        reports.append(report)
    summary = summarise_folds(reports)
    if adapt:
        summary.update(_adapted_summary([r["adapted"] for r in reports]))
    cv = {"folds": reports, **summary}
    labels = reports[0]["labels"]
    if all("confusion_matrix" in r and r["labels"] == labels and "mAP" not in r for r in reports):
        total = np.sum([np.asarray(r["confusion_matrix"]) for r in reports], axis=0)
        cv["confusion_matrix"] = total.tolist()
        write_confusion_csv(total, labels, out / "confusion_matrix.csv")
        plot_confusion(total, labels, out / "confusion_matrix.png")
    write_json_atomic(out / "cv_report.json", cv)
    for r in reports:
        print(f"fold {r['fold']}: accuracy {r.get('accuracy', float('nan')):.4f}  macro-F1 {r['macro_f1']:.4f}")
    print(f"mean accuracy {summary['mean_accuracy']:.4f} +- {summary['std_accuracy']:.4f}, "
          f"mean macro-F1 {summary['mean_macro_f1']:.4f}; report: {out / 'cv_report.json'}")
    if adapt:
        key = "mAP" if "adapted_mean_mAP" in summary else "accuracy"
        print(f"adapted to {adapt} unlabelled clips of each test fold, scored on the others: mean {key} "
              f"{summary[f'adapted_mean_{key}_before']:.4f} -> {summary[f'adapted_mean_{key}']:.4f} "
              f"+- {summary[f'adapted_std_{key}']:.4f}")
    return cv


def _before_after(report: dict) -> str:
    key = "mAP" if "mAP" in report else "accuracy"
    return f"{key} {report[f'{key}_before']:.4f} -> {report[key]:.4f} on the other {report['n']} clips"


def _adapted_summary(adapted: list[dict]) -> dict:
    """``adapted_mean_<metric>``, ``adapted_std_<metric>`` and ``adapted_mean_<metric>_before`` over the folds."""
    out = {f"adapted_{k}": v for k, v in summarise_folds(adapted).items() if k != "n_folds"}
    for key in ("accuracy", "mAP"):
        before = [r[f"{key}_before"] for r in adapted if f"{key}_before" in r]
        if before:
            out[f"adapted_mean_{key}_before"] = float(np.mean(before))
    return out
