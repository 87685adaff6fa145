"""Three ways to describe a data set, one result: a :class:`Manifest` of (path, labels, group, fold).

1. a folder per class: ``root/<label>/**/<file>``. Speech Commands' conventions are read too: a folder whose
   name starts with ``_`` is not a class (``_background_noise_`` becomes the run's background noise), the part of
   a file name before ``_nohash_`` is its speaker (group), and ``testing_list.txt`` / ``validation_list.txt``
   declare the folds ``testing`` / ``validation`` (the rest: ``training``);
2. a CSV with columns ``path,label[,group][,fold]`` (paths relative to the CSV; ``a;b`` = several labels), or
   a data set's own metadata CSV with known column names (ESC-50, UrbanSound8K, FSD50K, Hugging Face
   audiofolder; see ``CSV_COLUMNS``), whose files are found by name when they sit in a sibling folder;
3. a regular expression with named groups ``label`` (required), ``group``, ``fold``, searched in each
   file's path relative to the root, or a template of the file name's fields (``{group}_{}_{label}_{}``).
Files that cannot be used are not fatal: they are listed in ``Manifest.skipped`` with the reason.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import SUPPORTED_EXTENSIONS
from .names import describe_names, is_template, numbered_like_groups, template_regex

LABEL_SEPARATOR = ";"
NOISE_FOLDER = "_background_noise_"  # Speech Commands: background noise recordings, not a class
NOT_IN_CLASS_FOLDER = "not inside a class folder"
SPLIT_LISTS = {"testing_list.txt": "testing", "validation_list.txt": "validation"}  # Speech Commands' split files


class ManifestError(ValueError):
    """The data set description itself is unusable (missing columns, no files, bad pattern)."""


@dataclass(frozen=True)
class Item:
    path: str                 # absolute path
    labels: tuple[str, ...]   # one label, or several for multi-label data
    group: str | None = None  # e.g. speaker or recording session: never split across train/test
    fold: str | None = None   # declared fold, e.g. "1".."10"


@dataclass
class Manifest:
    items: list[Item]
    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source: str = "folder"
    noise_dir: str | None = None  # the data set's own background-noise folder (NOISE_FOLDER), if it has one

    @property
    def labels(self) -> list[str]:
        return sorted({label for item in self.items for label in item.labels}, key=_natural_key)

    @property
    def multilabel(self) -> bool:
        return any(len(item.labels) > 1 for item in self.items)

    @property
    def has_groups(self) -> bool:
        return any(item.group is not None for item in self.items)

    @property
    def folds(self) -> list[str]:
        return sorted({item.fold for item in self.items if item.fold is not None}, key=_natural_key)

    def fingerprint(self) -> str:
        """SHA-256 over every item (path, labels, group, fold) in order: equal for the same data set description."""
        digest = hashlib.sha256()
        for it in self.items:
            digest.update(json.dumps([it.path, list(it.labels), it.group, it.fold]).encode() + b"\n")
        return digest.hexdigest()

    def class_counts(self) -> Counter:
        return Counter(label for item in self.items for label in item.labels)

    def require_classes(self) -> "Manifest":
        """For training: ManifestError unless there are two classes or more (one class trains to a perfect,
        meaningless score)."""
        if len(self.labels) < 2:
            found = f"only the class {self.labels[0]!r}" if self.labels else "no class"
            hint = describe_names([Path(it.path) for it in self.items]) if self.source == "folder" else None
            raise ManifestError(f"{self.root}: {found} in {len(self.items)} files; a classifier needs two or more "
                                f"(one folder per class, or a label column with several values)"
                                + (f"; {hint}" if hint else ""))
        return self

    def subset(self, indices) -> "Manifest":
        return Manifest([self.items[i] for i in indices], self.root, [], self.source, self.noise_dir)


@functools.cache
def _tell(message: str) -> None:
    """Print a line about the data set to stderr, once a process (a command loads the manifest for each run)."""
    print(message, file=sys.stderr)


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _split_labels(cell: str, separators=(LABEL_SEPARATOR,)) -> tuple[str, ...]:
    for sep in separators[1:]:
        cell = cell.replace(sep, separators[0])
    return tuple(dict.fromkeys(x.strip() for x in cell.split(separators[0]) if x.strip()))


def audio_files(root: Path) -> list[Path]:
    return list(_iter_audio(root))


def from_folders(root) -> Manifest:
    """``root/<label>/**/<audio file>``; audio files directly in ``root`` are skipped, folders whose name starts with
    ``_`` are not classes (see the module docstring for Speech Commands' conventions)."""
    root = Path(root)
    lists = [name for name in SPLIT_LISTS if (root / name).is_file()]
    folds = _split_lists(root, lists)
    items, skipped, aside = [], [], Counter()
    for path in audio_files(root):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            skipped.append((str(path), NOT_IN_CLASS_FOLDER))
            continue
        if rel.parts[0].startswith("_"):
            aside[rel.parts[0]] += 1
            continue
        group = path.name.split("_nohash_")[0] if "_nohash_" in path.name else None
        fold = folds.get(rel.as_posix(), "training") if folds else None
        items.append(Item(str(path.absolute()), (rel.parts[0],), group, fold))
    used = {Path(it.path).relative_to(root.absolute()).parts[0] for it in items}
    if numbered_like_groups(sorted(used)):
        first, last = min(used, key=_natural_key), max(used, key=_natural_key)
        hint = describe_names([Path(it.path) for it in items])
        _tell(f"note: the class folders {first} ... {last} differ only in a number: if they are speakers, sessions "
              "or recordings rather than classes, describe the data with a CSV or --pattern"
              + (f"; {hint}" if hint else ""))
    for d in sorted(p.name for p in root.iterdir() if _is_class_folder_name(p)):
        if d not in used:  # never a silent class with no examples
            _tell(f"warning: class folder {root / d} contains no audio files; it is not used as a class")
    for d, n in sorted(aside.items()):
        use = "used as background noise for training" if d == NOISE_FOLDER else "left out"
        _tell(f"note: {root / d} is not a class (its name starts with '_'); its {n} audio files are {use}")
    if folds:
        _tell(f"folds from {', '.join(lists)}: {dict(Counter(it.fold for it in items))}")
    noise_dir = str((root / NOISE_FOLDER).absolute()) if NOISE_FOLDER in aside else None
    return _checked(Manifest(items, root, skipped, "folder", noise_dir))


def _is_class_folder_name(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


def _split_lists(root: Path, lists: list[str]) -> dict[str, str]:
    """Relative path -> fold (``testing``/``validation``) from the Speech Commands split files ``lists`` in
    ``root``."""
    folds = {}
    for name in lists:
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                folds[line.strip().replace("\\", "/")] = SPLIT_LISTS[name]
    return folds


# Column names the CSV reader understands, in order of preference (case-insensitive): ours first, then those of
# common data sets' metadata (Hugging Face audiofolder ``file_name``; ESC-50 ``filename,fold,target,category,
# src_file``; UrbanSound8K ``slice_file_name,fsID,fold,classID,class``; FSD50K ``fname,labels``). A name column is
# preferred to a numeric id column (``category`` over ``target``, ``class`` over ``classID``).
CSV_COLUMNS = {
    "path": ("path", "file_name", "filename", "file", "fname", "filepath", "file_path", "audio_path", "audio",
             "slice_file_name"),
    "label": ("label", "labels", "category", "class", "genre", "target", "classid", "class_id"),
    "group": ("group", "speaker", "speaker_id", "src_file", "fsid"),
    "fold": ("fold", "split"),
}


def _csv_columns(csv_path: Path, header: list[str]) -> dict[str, str]:
    """Role -> the header's column for it; ManifestError naming what is missing."""
    by_name = {c.strip().lower(): c.strip() for c in header}
    found = {role: next((by_name[n] for n in names if n in by_name), None) for role, names in CSV_COLUMNS.items()}
    missing = [role for role in ("path", "label") if found[role] is None]
    if missing:
        raise ManifestError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected path,label[,group][,fold] "
                            f"(or one of the known names: {'; '.join(', '.join(CSV_COLUMNS[r]) for r in missing)}), "
                            f"found {','.join(c.strip() for c in header) or 'no header'}")
    return {role: column for role, column in found.items() if column is not None}


class _NameIndex:
    """Audio files by file name and by stem, under the CSV's folder or, when that holds no audio (a metadata
    folder: ESC-50's ``meta/``, UrbanSound8K's ``metadata/``), under the folder above it. Built on first use; the
    walk stops after ``MAX_FOLDERS`` folders, so a stray CSV in a home folder cannot start a search of the disk."""

    MAX_FOLDERS = 20_000

    def __init__(self, base: Path):
        self.base, self.root, self._index, self.truncated = base, base, None, False

    def _build(self) -> None:
        self._index = {}
        for root in (self.base, self.base.parent):
            self.root = root
            try:
                for path in _iter_audio(root, self.MAX_FOLDERS):
                    for key in {path.name, path.stem}:
                        self._index.setdefault(key, []).append(path)
            except _TooManyFolders:
                self.truncated = True
            if self._index:
                return

    def find(self, name: str) -> tuple[Path | None, str]:
        if self._index is None:
            self._build()
        hits = self._index.get(name, [])
        if len(hits) > 1:
            return None, f"{len(hits)} files named {name!r} under {self.root}"
        if hits:
            return Path(os.path.abspath(hits[0])), ""
        return None, "file not found" + (f" (the search by name stopped after {self.MAX_FOLDERS} folders under "
                                         f"{self.root})" if self.truncated else "")


def from_csv(csv_path) -> Manifest:
    """CSV with columns ``path,label[,group][,fold]`` (or known aliases, see ``CSV_COLUMNS``); relative paths are
    relative to the CSV's folder and may not leave it (``../``); absolute paths are taken as they are. A bare
    file name not found there is looked up by name (or stem) under the CSV's folder or, for a CSV in a folder
    without audio (``meta/esc50.csv`` naming files in ``audio/``), under the folder above; a name that matches
    several files is skipped with that reason."""
    csv_path = Path(csv_path)
    root = csv_path.parent
    base = Path(os.path.abspath(root))  # lexical: ../ is collapsed, symlinked folders inside the data set stay inside
    by_name = _NameIndex(base)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a BOM (Excel) is not part of the header
        reader = csv.DictReader(f, delimiter=_delimiter(f.readline()))
        f.seek(0)
        columns = _csv_columns(csv_path, reader.fieldnames or [])
        if any(columns[role] != role for role in columns):
            _tell(f"{csv_path}: reading " + ", ".join(f"{role} from column {column!r}" for role, column
                                                      in columns.items()))
        split = (",", ";") if columns["label"].lower() == "labels" else (";",)  # FSD50K: labels="Guitar,Music"
        items, skipped, seen, looked_up = [], [], set(), 0
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}  # None: extra cells
            rel, labels = row.get(columns["path"], ""), _split_labels(row.get(columns["label"], ""), split)
            where = f"{csv_path}:{line}"
            if not rel:
                skipped.append((where, "empty path"))
                continue
            if not labels:
                skipped.append((str(base / rel), f"{where}: empty label"))
                continue
            named = Path(os.path.abspath(base / rel))
            if not Path(rel).is_absolute() and not named.is_relative_to(base):
                skipped.append((rel, f"{where}: path escapes the manifest's folder"))
                continue
            path, reason = (named, "") if named.is_file() else _find_by_name(rel, by_name)
            if path is None:
                skipped.append((str(base / rel), f"{where}: {reason}"))
            elif str(path) in seen:
                skipped.append((str(path), f"{where}: duplicate path (first row kept)"))
            else:
                seen.add(str(path))
                looked_up += path != named
                items.append(Item(str(path), labels, row.get(columns.get("group"), "") or None,
                                  row.get(columns.get("fold"), "") or None))
    if looked_up:
        _tell(f"{csv_path}: {looked_up} file(s) found by name under {by_name.root}")
    return _checked(Manifest(items, root, skipped, "csv"))


def _find_by_name(rel: str, by_name: _NameIndex) -> tuple[Path | None, str]:
    """For a CSV row whose file is not where it says: a bare file name is looked up by name (the audio may sit in
    a sibling folder, meta/ + audio/); anything else is not found."""
    if Path(rel).name == rel:
        return by_name.find(rel)
    return None, "file not found"


def from_pattern(root, pattern: str) -> Manifest:
    """Every audio file under ``root`` whose relative path (``/``-separated) matches ``pattern`` (``re.search``), a
    regular expression or a ``{field}`` template (:func:`~audioclf.data.names.template_regex`)."""
    root = Path(root)
    try:
        regex = re.compile(template_regex(pattern) if is_template(pattern) else pattern)
    except re.error as e:
        raise ManifestError(f"bad --pattern {pattern!r}: {e}") from None
    if "label" not in regex.groupindex:
        raise ManifestError(f"--pattern {pattern!r} needs a named group (?P<label>...), or {{label}} in a template "
                            "such as '{label}_{group}_{}'")
    items, skipped = [], []
    for path in audio_files(root):
        match = regex.search(path.relative_to(root).as_posix())
        if match is None:
            skipped.append((str(path), "does not match --pattern"))
            continue
        fields = match.groupdict()
        items.append(Item(str(path.absolute()), _split_labels(fields["label"]), fields.get("group"), fields.get("fold")))
    return _checked(Manifest(items, root, skipped, "pattern"))


def load_manifest(data, pattern: str | None = None) -> Manifest:
    """Dispatch: a ``.csv`` file, a folder with ``--pattern``, a folder holding ``manifest.csv``, class folders, or
    -- for a folder without class folders, e.g. ESC-50 (``audio/``, ``meta/esc50.csv``) or UrbanSound8K
    (``audio/fold1..10/``, ``metadata/UrbanSound8K.csv``) -- the one metadata CSV in it or one level down, else
    the class folders inside its only folder with audio."""
    data = Path(data)
    if not data.exists():
        raise ManifestError(f"{data}: no such file or folder")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise ManifestError(f"{data}: expected a folder or a .csv manifest")
        return from_csv(data)
    if pattern:
        return from_pattern(data, pattern)
    if (data / "manifest.csv").is_file():
        return from_csv(data / "manifest.csv")
    classes = _class_folders(data)
    fold_like = bool(classes) and all(_FOLD_FOLDER.fullmatch(c) for c in classes)
    if len(classes) < 2 or fold_like:
        metadata = _metadata_csvs(data)
        if len(metadata) == 1:
            _tell(f"{data}: no class folders ({', '.join(classes) or 'none'}); using the metadata file "
                  f"{metadata[0]}")
            return from_csv(metadata[0])
        if len(classes) == 1 and len(_class_folders(data / classes[0])) >= 2:  # e.g. GTZAN's Data/genres_original
            _tell(f"{data}: the one folder with audio, {classes[0]}, holds the class folders")
            return load_manifest(data / classes[0])
        if fold_like:
            raise ManifestError(f"{data}: the sub-folders ({', '.join(classes[:3])}, ...) look like folds, not "
                                f"classes; pass a CSV with path and label columns (e.g. the data set's metadata "
                                f"file) or --pattern")
    return from_folders(data)


_FOLD_FOLDER = re.compile(r"(fold|split)[ _-]?\d+", re.IGNORECASE)


def _class_folders(root: Path) -> list[str]:
    """The immediate sub-folders that hold audio somewhere below them."""
    found = []
    for d in sorted(p for p in root.iterdir() if _is_class_folder_name(p)):
        if next(_iter_audio(d), None) is not None:
            found.append(d.name)
    return found


class _TooManyFolders(Exception):
    pass


def _iter_audio(root: Path, max_folders: int | None = None):
    """Audio files under ``root`` in sorted order, hidden files and folders left out; raises _TooManyFolders
    past ``max_folders`` folders."""
    for n, (dirpath, dirnames, filenames) in enumerate(os.walk(root, followlinks=True), start=1):
        if max_folders is not None and n > max_folders:
            raise _TooManyFolders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in SUPPORTED_EXTENSIONS:
                yield Path(dirpath, f)


def _delimiter(header: str) -> str:
    """``,``; or ``;`` / tab when the header line has no comma but those (a European Excel export, a TSV)."""
    if "," in header:
        return ","
    return max(("\t", ";"), key=header.count) if ("\t" in header or ";" in header) else ","


def _metadata_csvs(root: Path) -> list[Path]:
    """CSVs in ``root`` or one folder down whose header names a path and a label column."""
    found = []
    for path in sorted([*root.glob("*.csv"), *root.glob("*/*.csv")]):
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                line = f.readline()
            header = next(csv.reader([line], delimiter=_delimiter(line)), [])
            _csv_columns(path, header)
        except (ManifestError, OSError, UnicodeDecodeError, csv.Error):
            continue
        found.append(path)
    return found


def _checked(manifest: Manifest) -> Manifest:
    if not manifest.items:
        reasons = Counter(reason.split(": ")[-1] for _, reason in manifest.skipped)
        detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        hint = describe_names([Path(p) for p, r in manifest.skipped if r == NOT_IN_CLASS_FOLDER])
        raise ManifestError(f"{manifest.root}: no usable audio files found" + (f" ({detail})" if detail else "")
                            + (f"; {hint}" if hint else ""))
    return manifest
