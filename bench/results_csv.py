"""Benchmark rows appended to a results CSV (``results/*.csv``), with a header when the file is new."""
from __future__ import annotations

import csv
import os
import platform
import subprocess
from pathlib import Path

VECTOR_UNITS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # widest first; the first two compute bf16 natively


def code_version(root: Path) -> str:
    """The checkout's short commit, with ``+dirty`` when tracked files differ from it: the ``code`` of a row."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_name(cpuinfo: str | None = None) -> str:
    """The CPU a row was measured on, e.g. ``x86_64 AMD EPYC x2 avx2``: architecture, model, usable cores and the
    widest vector unit (from ``/proc/cpuinfo``, or ``cpuinfo``'s text), as the same code runs several times faster
    on one CPU than another."""
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    unit = next((u for u in VECTOR_UNITS if u in flags), "")
    return " ".join(p for p in (platform.machine(), fields.get("model name", ""),
                                f"x{len(os.sched_getaffinity(0))}", unit) if p)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` (dicts with one set of keys) to the CSV at ``path``, in its header's column order. Rows whose
    keys are not the file's columns are refused (ValueError), never written under the wrong heading."""
    path = Path(path)
    fields = list(rows[0])
    if path.is_file() and path.stat().st_size:
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        if set(header) != set(fields):
            raise ValueError(f"{path}: its columns ({', '.join(header)}) are not the rows' "
                             f"({', '.join(fields)}); write to a new file")
        fields = header
    new = not path.is_file() or not path.stat().st_size
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)
