"""Output folders of commands that write runs: claimed before any work, never silently overwritten, removed again
when a command fails before it wrote anything worth keeping; the hash that ties derived files to their weights."""
from __future__ import annotations

import shutil
from pathlib import Path

from .io_utils import file_sha256

WEIGHTS_NAME = "model.safetensors"
RUN_MARKERS = ("config.json", WEIGHTS_NAME, "state", "skipped.csv", "metrics.csv", "cv_report.json", "dataset.json")
CANDIDATES_DIR = "candidates"  # a run's candidate runs, one folder each, when it chose its start
SELECTION_DIR = "selection"  # the candidates trained without held-out groups, when validation cannot hold groups out


def is_empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def candidate_runs(folder: Path) -> list[Path]:
    """The runs inside a run folder that chose its start (``candidates/*/``, ``selection/*/``)."""
    return [d for sub in (CANDIDATES_DIR, SELECTION_DIR) if (folder / sub).is_dir() for d in (folder / sub).iterdir()]


def inner_runs(folder: Path) -> list[Path]:
    """The runs inside ``folder``: its candidate runs, and a cross-validation's fold runs (``fold-*/``) with theirs."""
    folds = [d for d in folder.glob("fold-*") if d.is_dir()]
    return candidate_runs(folder) + folds + [d for f in folds for d in candidate_runs(f)]


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds audioclf output: a run's files, or only the inner runs (:func:`inner_runs`) of a
    command stopped before it wrote its own."""
    return any((d / name).exists() for d in (folder, *inner_runs(folder)) for name in RUN_MARKERS)


def holds_state(folder: Path) -> bool:
    """Whether the run folder ``folder`` holds a training state that ``--resume`` continues: the run's own
    ``state/`` or one of its candidate runs'."""
    return any((d / "state").is_dir() for d in (folder, *candidate_runs(folder)))


def claim(out, overwrite: bool = False, resume: bool = False, flag: str = "--out") -> Path:
    """Make ``out`` the command's output folder. A non-empty folder is refused unless ``resume`` (continue the run in
    it) or ``overwrite`` (replace it: only a folder that holds an audioclf run, whose files are then removed, so no
    ``model.onnx`` or ``evaluation/`` of the old run outlives it). Returns the folder, created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: exists and is not a folder")
    if not is_empty(out) and not resume:
        if not overwrite:
            raise ValueError(f"{flag} {out}: the folder exists and is not empty; pass --overwrite to replace the run "
                             "in it, or --resume to continue it")
        if not holds_run(out):
            raise ValueError(f"{flag} {out}: --overwrite replaces audioclf output, and this folder holds none "
                             f"(no {', '.join(RUN_MARKERS[:2])}); choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def worth_keeping(folder: Path) -> bool:
    """Whether a failed command's output folder holds work: weights, a training state to resume from, or logs."""
    return folder.is_dir() and any(p.name in (WEIGHTS_NAME, "state") or p.suffix == ".log" for p in folder.rglob("*"))


def discard_if_new(out, existed: bool) -> None:
    """After a failure: remove ``out`` when this command created it and nothing worth keeping is in it."""
    out = Path(out)
    if not existed and out.is_dir() and not worth_keeping(out):
        shutil.rmtree(out, ignore_errors=True)


def weights_sha256(run) -> str | None:
    """SHA-256 of ``RUN/model.safetensors`` (None without one): what derived files (ONNX export, evaluation reports)
    record, so a retrained run's old derivatives are recognised as stale."""
    path = Path(run) / WEIGHTS_NAME
    return file_sha256(path) if path.is_file() else None
