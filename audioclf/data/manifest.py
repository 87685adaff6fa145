"""Three ways to describe a data set, one result: a :class:`Manifest` of (path, labels, group, fold).

1. a folder per class: ``root/<label>/**/<file>``;
2. a CSV with columns ``path,label[,group][,fold]`` (paths relative to the CSV; ``a;b`` = several labels);
3. a regular expression with named groups ``label`` (required), ``group``, ``fold``, searched in each
   file's path relative to the root.
Files that cannot be used are not fatal: they are listed in ``Manifest.skipped`` with the reason.
"""
from __future__ import annotations

import csv
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import SUPPORTED_EXTENSIONS

LABEL_SEPARATOR = ";"


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

    def class_counts(self) -> Counter:
        return Counter(label for item in self.items for label in item.labels)

    def subset(self, indices) -> "Manifest":
        return Manifest([self.items[i] for i in indices], self.root, [], self.source)


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _split_labels(cell: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.strip() for x in cell.split(LABEL_SEPARATOR) if x.strip()))


def _audio_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and Path(f).suffix.lower() in SUPPORTED_EXTENSIONS]
    return files


def from_folders(root) -> Manifest:
    """``root/<label>/**/<audio file>``; audio files directly in ``root`` are skipped."""
    root = Path(root)
    items, skipped = [], []
    for path in _audio_files(root):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            skipped.append((str(path), "not inside a class folder"))
            continue
        items.append(Item(str(path.absolute()), (rel.parts[0],)))
    used = {Path(it.path).relative_to(root.absolute()).parts[0] for it in items}
    for d in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d not in used:  # never a silent class with no examples
            print(f"warning: class folder {root / d} contains no audio files; it is not used as a class",
                  file=sys.stderr)
    return _checked(Manifest(items, root, skipped, "folder"))


def from_csv(csv_path) -> Manifest:
    """CSV with columns ``path,label[,group][,fold]``; relative paths are relative to the CSV's folder and may
    not leave it (``../``); absolute paths are taken as they are."""
    csv_path = Path(csv_path)
    root = csv_path.parent
    base = Path(os.path.abspath(root))  # lexical: ../ is collapsed, symlinked folders inside the data set stay inside
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = {"path", "label"} - set(columns)
        if missing:
            raise ManifestError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                                f"expected path,label[,group][,fold], found {','.join(columns) or 'no header'}")
        items, skipped, seen = [], [], set()
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}  # None: extra cells
            rel, labels = row.get("path", ""), _split_labels(row.get("label", ""))
            path = Path(os.path.abspath(base / rel))
            where = f"{csv_path}:{line}"
            if not rel:
                skipped.append((where, "empty path"))
            elif not labels:
                skipped.append((str(path), f"{where}: empty label"))
            elif not Path(rel).is_absolute() and not path.is_relative_to(base):
                skipped.append((rel, f"{where}: path escapes the manifest's folder"))
            elif str(path) in seen:
                skipped.append((str(path), f"{where}: duplicate path (first row kept)"))
            elif not path.is_file():
                skipped.append((str(path), f"{where}: file not found"))
            else:
                seen.add(str(path))
                items.append(Item(str(path), labels, row.get("group") or None, row.get("fold") or None))
    return _checked(Manifest(items, root, skipped, "csv"))


def from_pattern(root, pattern: str) -> Manifest:
    """Every audio file under ``root`` whose relative path (``/``-separated) matches ``pattern`` (``re.search``)."""
    root = Path(root)
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ManifestError(f"bad --pattern {pattern!r}: {e}") from None
    if "label" not in regex.groupindex:
        raise ManifestError(f"--pattern {pattern!r} needs a named group (?P<label>...)")
    items, skipped = [], []
    for path in _audio_files(root):
        match = regex.search(path.relative_to(root).as_posix())
        if match is None:
            skipped.append((str(path), "does not match --pattern"))
            continue
        fields = match.groupdict()
        items.append(Item(str(path.absolute()), _split_labels(fields["label"]), fields.get("group"), fields.get("fold")))
    return _checked(Manifest(items, root, skipped, "pattern"))


def load_manifest(data, pattern: str | None = None) -> Manifest:
    """Dispatch: a ``.csv`` file, a folder with ``--pattern``, a folder holding ``manifest.csv``, or class folders."""
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
    return from_folders(data)


def _checked(manifest: Manifest) -> Manifest:
    if not manifest.items:
        reasons = Counter(reason.split(": ")[-1] for _, reason in manifest.skipped)
        detail = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        raise ManifestError(f"{manifest.root}: no usable audio files found" + (f" ({detail})" if detail else ""))
    return manifest
