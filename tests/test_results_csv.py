"""``bench/results_csv.py``: benchmark rows land under their own headings, with the code that made them."""
from __future__ import annotations

import csv
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_follow_the_files_header_and_foreign_columns_are_refused(tmp_path):
    append_rows = bench_module("results_csv").append_rows
    path = tmp_path / "r.csv"
    append_rows(path, [{"set": "env", "value": 0.5}])
    append_rows(path, [{"value": 0.75, "set": "music"}])  # the same columns in another order
    assert list(csv.reader(open(path))) == [["set", "value"], ["env", "0.5"], ["music", "0.75"]]
    before = path.read_text()
    with pytest.raises(ValueError, match=f"{path}.*columns"):
        append_rows(path, [{"set": "speech", "value": 0.9, "augment": True}])
    assert path.read_text() == before


def test_code_version_names_the_commit_and_a_changed_checkout(tmp_path):
    code_version = bench_module("results_csv").code_version
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_version(tmp_path) == commit
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == commit + "+dirty"
    assert code_version(tmp_path / "not-a-checkout") == "unknown"
