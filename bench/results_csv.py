"""Benchmark rows appended to a results CSV (``results/*.csv``), with a header when the file is new."""
from __future__ import annotations

import csv
from pathlib import Path


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` (dicts with one set of keys) to the CSV at ``path``."""
    new = not Path(path).is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
