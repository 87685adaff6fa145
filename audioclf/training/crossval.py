"""K-fold cross-validation: declared folds, or stratified group-aware folds; one run folder per fold."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data.manifest import load_manifest
from ..data.splits import declared_cv_folds, kfold
from ..evaluation.metrics import summarise_folds
from ..evaluation.plots import plot_confusion, write_confusion_csv
from ..io_utils import write_json_atomic, write_text_atomic
from .trainer import train


def cross_validate(data, out, folds: int = 5, **settings) -> dict:
    """Train and test once per fold; write ``OUT/cv_report.json`` and the summed confusion matrix."""
    out = Path(out)
    manifest = load_manifest(data, settings.get("pattern")).require_classes()
    fold_tests = kfold(manifest, folds, settings.get("seed", 0))
    declared = declared_cv_folds(manifest)  # kfold's test folds, when the data declares them
    names = declared or [str(k) for k in range(len(fold_tests))]
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
        reports.append(report)
    summary = summarise_folds(reports)
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
    return cv
