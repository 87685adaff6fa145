"""Output folders of commands that write runs: claimed before any work, held by one command at a time, never
silently overwritten, removed again when a command fails before it wrote anything worth keeping."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): folders are claimed without the lock
    fcntl = None

WEIGHTS_NAME = "model.safetensors"
RUN_MARKERS = ("config.json", WEIGHTS_NAME, "state", "skipped.csv", "metrics.csv", "cv_report.json", "dataset.json")
CANDIDATES_DIR = "candidates"  # a run's candidate runs, one folder each, when it chose its start
SELECTION_DIR = "selection"  # the candidates trained without held-out groups, when validation cannot hold groups out
LOCK_NAME = ".audioclf.lock"  # flock-ed by the command writing into the folder; removed when it ends

_held: dict[Path, list[int]] = {}  # folders this process holds -> [their lock file's descriptor, claims]


def is_empty(folder: Path) -> bool:
    """Missing, or holding nothing but a lock file."""
    return not folder.exists() or (folder.is_dir() and all(p.name == LOCK_NAME for p in folder.iterdir()))


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
    """Make ``out`` the command's output folder, held (:func:`hold`) until :func:`release`. A folder another process
    holds is refused. A non-empty folder is refused unless ``resume`` (continue the run in it) or ``overwrite``
    (replace it: only a folder that holds an audioclf run, whose files are then removed, so no ``model.onnx`` or
    ``evaluation/`` of the old run outlives it). Returns the folder, created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    hold(out, flag)
    replace = not is_empty(out) and not resume
    try:
        if replace and not overwrite:
            raise ValueError(f"{flag} {out}: the folder exists and is not empty; pass --overwrite to replace the run "
                             "in it, or --resume to continue it")
        if replace and not holds_run(out):
            raise ValueError(f"{flag} {out}: --overwrite replaces audioclf output, and this folder holds none "
                             f"(no {', '.join(RUN_MARKERS[:2])}); choose a new or empty folder")
    except ValueError:
        release(out)
        raise
    if replace:  # the overwrite
        for p in out.iterdir():
            if p.name != LOCK_NAME:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return out


@contextlib.contextmanager
def claimed(out, overwrite: bool = False, resume: bool = False, flag: str = "--out"):
    """:func:`claim` ``out`` for the ``with`` block (the folder), :func:`release` it after."""
    folder = claim(out, overwrite, resume, flag)
    try:
        yield folder
    finally:
        release(folder)


def hold(folder: Path, flag: str = "--out") -> None:
    """Take ``folder``'s lock file (an exclusive, non-blocking ``flock``, which the system drops when the process
    ends however it ends), or raise ``ValueError`` naming the process that holds it. A process may hold a folder
    several times; :func:`release` drops one hold."""
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        return
    if fcntl is None:
        return
    while True:
        try:
            fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a full or read-only file system: the command's own first write says so
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"{flag} {folder}: another audioclf command (process {holder}) is writing into this "
                             "folder; wait for it to end, or choose another folder") from None
        except OSError:  # a file system without flock: claimed without the lock
            os.close(fd)
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(key / LOCK_NAME).st_ino == os.fstat(fd).st_ino:
                break  # else its holder removed the file between our open and flock: take the new one
        os.close(fd)
    with contextlib.suppress(OSError):  # on a full disk the lock holds without the process id
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]


def release(folder) -> None:
    """Drop one claim of ``folder`` by this process (nothing when it holds none); the last one drops the lock and
    removes its file first, so that no one takes the lock of a file that is gone."""
    key = Path(folder).resolve()
    if key not in _held:
        return
    _held[key][1] -= 1
    if _held[key][1] == 0:
        fd, _ = _held.pop(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key / LOCK_NAME)
        os.close(fd)


def worth_keeping(folder: Path) -> bool:
    """Whether a failed command's output folder holds work: weights, a training state to resume from, or logs."""
    return folder.is_dir() and any(p.name in (WEIGHTS_NAME, "state") or p.suffix == ".log" for p in folder.rglob("*"))


def discard_if_new(out, existed: bool) -> None:
    """After a failure: remove ``out`` when this command created it and nothing worth keeping is in it."""
    out = Path(out)
    if not existed and out.is_dir():
        try:
            hold(out)  # this command's own lock, or a sign that another command has made the folder its own
        except ValueError:
            return
        if not worth_keeping(out):
            shutil.rmtree(out, ignore_errors=True)
    release(out)
