"""Data-parallel training: ``audioclf train --nproc 2`` (two gloo CPU processes) gives a valid run, as good as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "datasets" / "fsdd" / "recordings"

pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason="needs datasets/fsdd")


def fsdd_subset(folder: Path) -> Path:
    """3 speakers x 10 digits x 15 takes; fold = "test" for takes 0-4."""
    rows = ["path,label,group,fold"]
    for speaker in ("george", "jackson", "lucas"):
        for digit in range(10):
            for take in range(15):
                path = FSDD / f"{digit}_{speaker}_{take}.flac"
                rows.append(f"{path},{digit},{speaker},{'test' if take < 5 else 'train'}")
    csv = folder / "fsdd.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def train(tmp_path: Path, csv: Path, name: str, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = tmp_path / name
    cmd = [sys.executable, "-m", "audioclf", "train", str(csv), "--out", str(out), "--test-fold", "test",
           "--epochs", "8", "--model", "cnn", "--width", "0.25", "--batch-size", "32",
           "--cache-dir", str(tmp_path / "cache"), *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "report": json.loads((out / "report.json").read_text())}


def test_two_processes_match_one(tmp_path):
    import audioclf
    csv = fsdd_subset(tmp_path)
    two = train(tmp_path, csv, "ddp2", "--nproc", "2")
    one = train(tmp_path, csv, "single")
    clf = audioclf.load(two["out"])  # a valid run folder
    assert clf is not None
    assert (two["out"] / "metrics.csv").read_text().count("\n") == 9  # header + 8 epochs, written once
    assert two["stdout"].count("epoch   1/8") == 1  # only rank 0 prints
    acc2, acc1 = two["report"]["accuracy"], one["report"]["accuracy"]
    print(f"test accuracy: 2 processes {acc2:.3f}, 1 process {acc1:.3f}")
    assert acc2 >= 0.3  # chance is 0.1
    assert abs(acc2 - acc1) <= 0.2
    config = json.loads((two["out"] / "config.json").read_text())
    assert config["training"]["nproc"] == 2 and config["training"]["batch_size"] == 32
