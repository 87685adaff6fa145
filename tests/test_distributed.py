"""Data-parallel training: ``audioclf train --nproc 2 --device cpu`` (two gloo CPU processes) gives a valid run, as good
as one process; more processes than GPUs is refused with a clear error."""
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
           "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "report": json.loads((out / "report.json").read_text())}


@pytest.mark.slow
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


def test_more_processes_than_gpus_is_refused_before_any_starts(tmp_path, monkeypatch, capsys):
    """One GPU and ``--nproc 2``: NCCL cannot give two ranks one GPU (the child failed with "invalid device
    ordinal" on a 1-GPU machine), so the command says what to do instead, and starts nothing."""
    import torch

    from audioclf import cli
    from audioclf.cli import commands
    from audioclf.training.distributed import uses_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(commands, "relaunch", lambda nproc, argv: pytest.fail("launched processes"))
    assert uses_gpus("auto", 1) and uses_gpus("cuda", 1) and not uses_gpus("cpu", 2)
    with pytest.raises(ValueError, match="2 processes on this machine need 2 GPUs .* has 1"):
        uses_gpus("auto", 2)
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "audioclf train: error: 2 processes" in err and "--device cpu" in err
    monkeypatch.setattr(commands, "relaunch", lambda nproc, argv: 0)  # CPU processes are not limited by the GPUs
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--nproc", "2", "--device", "cpu"]) == 0
