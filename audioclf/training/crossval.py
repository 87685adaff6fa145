"""K-fold cross-validation: declared folds, or stratified group-aware folds; one run folder per fold, trained one
after another or ``jobs`` at a time in worker processes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import traceback
from concurrent.futures import as_completed
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..adaptation import adapted_test_report, check_adaptable
from ..checkpoint import read_config
from ..data.manifest import load_manifest
from ..data.splits import declared_cv_folds, kfold
from ..evaluation.metrics import summarise_folds
from ..evaluation.plots import plot_confusion, write_confusion_csv
from ..io_utils import write_json_atomic, write_text_atomic
from ..run_folder import claimed, holds_state
from ..settings import check_fields, option
from ..workers import process_pool
from ..malloc import keep_activations_in_heap
from ..models import create_model
from .autoconfig import choose_model
from .config import TrainConfig
from . import train
from .settings import checked_config


@dataclass(frozen=True)
class Fold:
    """One fold: its name, its manifest (``fold`` column ``test``/``train``), run folder, log and test items."""
    name: str
    csv: Path
    run: Path
    log: Path
    test_items: list


@dataclass
class CVConfig:
    """``audioclf cv``'s own settings (the rest are :class:`TrainConfig` fields)."""

    folds: int = option(5, "K when the data declares no folds", min=2)
    adapt: int = option(0, "also adapt each fold's model to N unlabelled clips of its test fold (a held-out speaker, "
                           "device or site; see `audioclf adapt`) and score the other test clips before and after",
                        min=0, metavar="N")
    jobs: int = option(1, "train N folds at once, each in its own process with 1/N of the threads and its output in "
                          "OUT/fold-NAME.log: on a CPU, small models use the cores better side by side than split "
                          "between one fold's threads", min=1, metavar="N")


def cross_validate(data, out, **settings) -> dict:
    """Train and test once per fold; write ``OUT/cv_report.json`` and the summed confusion matrix. ``settings``:
    :class:`CVConfig` and :class:`TrainConfig` fields.

    ``adapt``: also measure unsupervised adaptation to each test fold (:func:`adapted_test_report`): that many of
    its clips, labels unused, adapt the fold's model; the report's ``adapted`` entry scores the others before and
    after, and the summary gains ``adapted_mean_accuracy`` (or ``adapted_mean_mAP``) and its ``_before``.
    ``jobs``: folds trained at once, each in its own process with ``torch.get_num_threads() // jobs`` threads
    (at least one) and its output in ``OUT/fold-NAME.log``; the folds' results do not depend on it, beyond the
    rounding that a different thread count brings."""
    out, names = Path(out), {f.name for f in fields(CVConfig)}
    cv = CVConfig(**{k: v for k, v in settings.items() if k in names})
    settings = {k: v for k, v in settings.items() if k not in names}
    check_fields(cv)
    if cv.jobs > 1 and "RANK" in os.environ:
        raise ValueError("--jobs trains folds in processes of its own; it cannot run inside a distributed launch")
    manifest = load_manifest(data, settings.get("pattern")).require_classes()
    fold_tests = kfold(manifest, cv.folds, settings.get("seed", 0))
    declared = declared_cv_folds(manifest)  # kfold's test folds, when the data declares them
    if cv.adapt and min(map(len, fold_tests)) <= cv.adapt:
        raise ValueError(f"--adapt {cv.adapt}: a test fold has only {min(map(len, fold_tests))} clip(s); adapting "
                         "needs more, so that some are left to score")
    cfg = checked_train_config(settings, manifest, cv.adapt)
    if settings.get("noise_dir") is None and manifest.noise_dir:
        settings["noise_dir"] = manifest.noise_dir  # the fold CSVs below do not carry the data set's noise folder
    with claimed(out, overwrite=cfg.overwrite, resume=cfg.resume):
        source = ("declared folds" if declared else
                  f"stratified{' group-aware' if manifest.has_groups else ''} {cv.folds}-fold")
        print(f"cross-validation: {len(fold_tests)} folds ({source})")
        names = declared or [str(k) for k in range(len(fold_tests))]
        plan = [_write_fold(manifest, out, name, set(test)) for name, test in zip(names, fold_tests)]
        fold_settings = {**settings, "pattern": None, "test_fold": "test", "overwrite": False}
        reports = run_folds(plan, fold_settings, cv, cfg.resume)
        return write_cv_report(out, reports, cv.adapt)


def checked_train_config(settings: dict, manifest, adapt: int) -> TrainConfig:
    """The folds' training settings, checked before any training (:func:`checked_config`), and with ``adapt`` a
    model that batch-norm adaptation can adapt."""
    cfg, _ = checked_config(None, settings)
    if adapt:
        for model in cfg.model_names() or [choose_model(len(manifest.items))[0]]:
            check_adaptable(create_model(model, 2))
    return cfg


def run_folds(plan: list[Fold], fold_settings: dict, cv: CVConfig, resume: bool) -> list[dict]:
    """Every fold's test report, in the plan's order: finished folds kept (``resume``), the others trained, one at a
    time or ``cv.jobs`` at a time."""
    done = {fold.name: report for fold in plan if resume and (report := finished_fold(fold, fold_settings, cv.adapt))}
    todo = [fold for fold in plan if fold.name not in done]
    if cv.jobs == 1:
        for fold in todo:
            print(f"--- fold {fold.name}: {len(fold.test_items)} test files")
            done[fold.name] = _run_fold(fold, fold_settings, cv.adapt)
            if cv.adapt:
                print(_adapted_line(done[fold.name], cv.adapt))
    elif todo:
        done.update(zip([f.name for f in todo], _run_folds_in_processes(todo, fold_settings, cv.adapt, cv.jobs)))
    return [done[fold.name] for fold in plan]


def write_cv_report(out: Path, reports: list[dict], adapt: int) -> dict:
    """``OUT/cv_report.json`` (every fold's report and their summary) and the summed confusion matrix; printed."""
    summary = summarise_folds(reports)
    if adapt:
        summary.update(_adapted_summary([r["adapted"] for r in reports]))
    cv = {"folds": reports, **summary}
    notes = fold_notes(out, [r["fold"] for r in reports])
    cv.update({k: v for k, v in notes.items() if v})
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
    for name, n in notes["duplicates"].items():
        print(f"note: fold {name}: {n['test']} test clip(s) copy training clips and {n['label_conflicts']} pair(s) "
              f"of identical clips carry different labels ({out / f'fold-{name}' / 'duplicates.csv'})")
    for name, (heard, groups) in notes["test_groups_heard"].items():
        print(f"note: fold {name}: {heard} of its {groups} test groups are also in its training folds")
    if adapt:
        key = "mAP" if "adapted_mean_mAP" in summary else "accuracy"
        print(f"adapted to {adapt} unlabelled clips of each test fold, scored on the others: mean {key} "
              f"{summary[f'adapted_mean_{key}_before']:.4f} -> {summary[f'adapted_mean_{key}']:.4f} "
              f"+- {summary[f'adapted_std_{key}']:.4f}")
    return cv


def fold_notes(out: Path, names: list[str]) -> dict:
    """What the fold runs noted about their tests, from their ``config.json``: ``{"duplicates": {fold: counts},
    "test_groups_heard": {fold: [heard, groups]}}``, each holding only the folds that have any."""
    notes = {"duplicates": {}, "test_groups_heard": {}}
    for name in names:
        config = read_config(out / f"fold-{name}")  # a fold with a report has its config
        for key in notes:
            if config.get(key):
                notes[key][name] = config[key]
    return notes


def _write_fold(manifest, out: Path, name: str, test: set) -> Fold:
    """``OUT/fold-NAME.csv``: the data set's items, each marked ``test`` or ``train``, so that train() splits it like
    any data set."""
    buf = io.StringIO()
    buf.write("path,label,group,fold\n")
    for i, it in enumerate(manifest.items):
        cells = [it.path, ";".join(it.labels), it.group or "", "test" if i in test else "train"]
        buf.write(",".join('"' + c.replace('"', '""') + '"' for c in cells) + "\n")
    csv_path = out / f"fold-{name}.csv"
    write_text_atomic(csv_path, buf.getvalue())
    return Fold(name, csv_path, out / f"fold-{name}", out / f"fold-{name}.log",
                [manifest.items[i] for i in sorted(test)])


OPERATIONAL = ("resume", "overwrite", "workers", "cache_dir", "checkpoint_every", "device", "nproc", "compile")


def finished_fold(fold: Fold, settings: dict, adapt: int) -> dict | None:
    """The report of the fold's run when it finished and is the run these settings would train (same fold data,
    same results-bearing settings, weights that load and match their config); else None, with the reason."""
    from ..checkpoint import CheckpointError, load_run
    report_path = fold.run / "report.json"
    if not report_path.is_file():
        if fold.run.exists():
            print(f"fold {fold.name}: unfinished run in {fold.run}: "
                  + ("resuming it" if holds_state(fold.run) else "training it again"))
        return None
    try:
        _, config = load_run(fold.run)  # weights checked against the config's hash
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (CheckpointError, OSError, ValueError) as e:
        print(f"fold {fold.name}: its run cannot be reused ({e}); training it again")
        shutil.rmtree(fold.run)
        return None
    trained = config.get("training", {})
    differ = [k for k, v in settings.items() if k not in OPERATIONAL and v is not None and v != "auto"
              and trained.get(k) != ({"on": True, "off": False}.get(v, v) if k == "balance" else v)]
    if "metrics" not in config or config.get("data_sha256") != load_manifest(fold.csv).fingerprint() or differ:
        why = f"settings differ ({', '.join(differ)})" if differ else "its data or split differ, or it did not finish"
        print(f"fold {fold.name}: its run is not this one ({why}); training it again")
        shutil.rmtree(fold.run)
        return None
    report["fold"] = fold.name
    if adapt:
        report["adapted"] = adapted_test_report(fold.run, fold.test_items, adapt, settings.get("cache_dir"),
                                                settings.get("seed", 0))
    print(f"fold {fold.name}: finished run kept ({fold.run}: settings, data and weights checked)")
    return report


def _run_fold(fold: Fold, settings: dict, adapt: int) -> dict:
    """Train the fold's run and test it (and adapt it, given ``adapt``); its report, ``fold`` set to its name. A
    fold run that exists but did not finish resumes (``resume``) from its state or its candidates' states, or else is
    trained again from the start."""
    resumable = settings.get("resume") and holds_state(fold.run)
    settings = {**settings, "resume": bool(resumable), "overwrite": not resumable}
    report = train(fold.csv, fold.run, **settings)
    report["fold"] = fold.name
    if adapt:
        report["adapted"] = adapted_test_report(fold.run, fold.test_items, adapt, settings.get("cache_dir"),
                                                settings.get("seed", 0))
    return report


def _run_folds_in_processes(plan: list[Fold], settings: dict, adapt: int, jobs: int) -> list[dict]:
    """Every fold of ``plan``, ``jobs`` at a time in worker processes; the reports in the plan's order. A fold that
    fails does not stop the others: their runs are finished and kept, then the failures are raised together."""
    threads = max(1, torch.get_num_threads() // jobs)
    print(f"{jobs} folds at a time, {threads} thread(s) each; each fold's output in {plan[0].log.parent}/fold-NAME.log")
    reports, failed = {}, []
    with process_pool(jobs, _start_worker, (threads,)) as pool:  # ended, not awaited, on Ctrl-C or SIGTERM
        running = {}
        for fold in plan:
            print(f"--- fold {fold.name}: {len(fold.test_items)} test files (log: {fold.log})")
            running[pool.submit(_run_fold_logged, fold, settings, adapt)] = fold
        for done in as_completed(running):
            fold = running[done]
            try:
                reports[fold.name] = report = done.result()
            except Exception as e:  # noqa: BLE001 - every fold's failure is reported, after the others finish
                failed.append(f"fold {fold.name}: {type(e).__name__}: {e} (log: {fold.log})")
                continue
            key = "mAP" if "mAP" in report else "accuracy"
            print(f"fold {fold.name} done: {key} {report[key]:.4f}")
            if adapt:
                print(_adapted_line(report, adapt))
    if failed:
        kept = f"; the other {len(reports)} folds' runs are kept" if reports else ""
        raise RuntimeError(f"{len(failed)} of {len(plan)} folds failed{kept}:\n" + "\n".join(failed))
    return [reports[fold.name] for fold in plan]


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    keep_activations_in_heap()  # as the audioclf command does in its own process


def _run_fold_logged(fold: Fold, settings: dict, adapt: int) -> dict:
    """:func:`_run_fold` with this worker's output (stdout and stderr, and the traceback of a failure) written to
    the fold's log."""
    with open(fold.log, "w", encoding="utf-8", buffering=1) as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            return _run_fold(fold, settings, adapt)
        except BaseException:
            traceback.print_exc()
            raise


def _adapted_line(report: dict, adapt: int) -> str:
    return f"fold {report['fold']}, adapted to {adapt} unlabelled test clips: {_before_after(report['adapted'])}"


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
