"""The benchmarks' own helpers: rows land under their own headings with the code that made them, and the
generalisation suite's table reports seeds as mean +- sd and the default's distance from the best column."""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str, monkeypatch=None):
    if monkeypatch is not None:  # a bench script imports its sibling modules by name
        monkeypatch.syspath_prepend(str(ROOT / "bench"))
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


def test_the_suite_table_reports_the_seeds_spread_and_the_defaults_gap(monkeypatch):
    table = bench_module("generalise", monkeypatch).table
    scores = {"default": (0.85, 0.95), "scratch": (0.80, 0.80), "no-augment": (0.90, 0.92)}
    rows = [{"set": "prosody", "config": c, "metric": "accuracy", "value": v, "macro_f1": v, "cpu_seconds": 10.0 * i}
            for c, values in scores.items() for i, v in enumerate(values)]
    rows += [{**r, "set": "env", "value": r["value"] - (0.2 if r["config"] != "default" else 0)} for r in rows]
    lines = table(rows, ["prosody", "env"], list(scores)).splitlines()
    assert lines[0] == "| set | default | scratch | no-augment | default - best |"
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[0] == "prosody (accuracy, 2 seed(s))"
    assert cells[1].startswith("90.00 +- 7.07 (F1 0.900, CPU 5 s)")  # sd over seeds: sqrt(2) * 5 points
    assert cells[2].startswith("80.00 +- 0.00") and cells[4] == "-1.00"  # the mean under no-augment's 91.00
    assert lines[3].split("|")[-2].strip() == "+0.00"  # env: the default is the best column


def test_the_machine_name_gives_the_cpu_model_and_its_widest_vector_unit():
    machine_name = bench_module("results_csv").machine_name
    xeon = "processor\t: 0\nmodel name\t: Intel Xeon Platinum 8488C\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu fma avx avx2\n"
    assert machine_name(xeon).endswith("Intel Xeon Platinum 8488C x%d amx_bf16" % len(os.sched_getaffinity(0)))
    assert machine_name(epyc).endswith("AMD EPYC x%d avx2" % len(os.sched_getaffinity(0)))
    assert machine_name("").split()[-1].startswith("x")  # nothing known of the CPU: the cores alone
