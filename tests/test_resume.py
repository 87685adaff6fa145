"""``audioclf train --resume``: a run SIGKILLed at random moments and resumed ends with exactly the weights of
an uninterrupted run; the saved state holds no pickle; a torn state pair is detected."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SR = 8000
TONES = {"low": 300.0, "mid": 900.0, "high": 2500.0}
# 3 x 40 files -> ~86 training clips -> 10 steps of 8 per epoch
ARGS = ["--model", "cnn", "--width", "0.25", "--n-mels", "32", "--sample-rate", str(SR), "--clip-seconds", "0.25",
        "--batch-size", "8", "--epochs", "3", "--checkpoint-every", "3", "--device", "cpu", "--seed", "0"]
KILLS = 3


def make_tones(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(0.4 * SR)) / SR
    for label, f in TONES.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * rng.standard_normal()) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(root / label / f"{label}_{i}.wav", x.astype(np.float32), SR, subtype="PCM_16")
    return root


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cmd(data, out, cache, *extra):
    return [sys.executable, "-m", "audioclf", "train", str(data), "--out", str(out), "--cache-dir", str(cache),
            *ARGS, *extra]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return make_tones(root / "data"), root / "cache"


@pytest.fixture(scope="module")
def reference(tones):
    """One uninterrupted run."""
    data, cache = tones
    ref = cache.parent / "ref"
    done = subprocess.run(_cmd(data, ref, cache), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (ref / "state" / "state.safetensors").is_file() and (ref / "state" / "state.json").is_file()
    return ref


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tones, reference, tmp_path):
    data, cache = tones
    ref = reference

    run = tmp_path / "killed"
    seed = int(os.environ.get("AUDIOCLF_RESUME_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    state_json = run / "state" / "state.json"
    kills, launches, resumed_msgs, spent = 0, 0, 0, None
    while True:
        extra = ["--resume"] if launches else []
        proc = subprocess.Popen(_cmd(data, run, cache, *extra), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        launches += 1
        if kills < KILLS:
            before = _mtime(state_json)
            deadline = time.monotonic() + 90
            while proc.poll() is None and _mtime(state_json) == before and time.monotonic() < deadline:
                time.sleep(0.005)  # wait for this process to write a new state ...
            time.sleep(rng.uniform(0.0, 0.3))  # ... then kill it at a random moment
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=120)
        resumed_msgs += "resumed from" in out
        spent = json.loads(state_json.read_text())["spent"] if proc.returncode else spent  # at the last kill
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode} (seed {seed}):\n{err[-3000:]}"
        assert launches < 20
    print(f"resume test: {kills} SIGKILLs, {launches} launches, random seed {seed}")
    assert kills >= 1, "the run finished before any kill: make it longer"
    assert resumed_msgs >= 1

    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after {kills} kills (seed {seed})"
    ref_cfg, run_cfg = (json.loads((d / "config.json").read_text()) for d in (ref, run))
    assert ref_cfg["best_epoch"] == run_cfg["best_epoch"]
    assert ref_cfg["metrics"]["test_accuracy"] == run_cfg["metrics"]["test_accuracy"]
    # the timings count the killed processes too, up to the state the last one saved
    metrics = run_cfg["metrics"]
    assert all(v > 0 for v in spent)
    timings = [metrics["train_seconds"], metrics["cpu_seconds"], metrics["wall_seconds"]]
    assert all(m > v for m, v in zip(timings, spent))
    # the metrics rows (train loss sums carried across the interruption) match too, except the timings
    strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(  # noqa: E731
        (d / "state" / "state.json").read_text())["rows"]]
    assert strip(ref) == strip(run)


@pytest.mark.slow
def test_state_files_are_not_pickle_and_name_the_tensors(tones, reference, tmp_path):
    import shutil

    from audioclf.training.state import load_state

    data, cache = tones
    run = tmp_path / "r"
    shutil.copytree(reference, run)
    meta = json.loads((run / "state" / "state.json").read_text())
    assert meta["epoch"] == 3 and meta["epoch_done"] and meta["step"] == 3 * meta["batches_done"] > 0
    blob = (run / "state" / "state.safetensors").read_bytes()
    # the safetensors layout (a little-endian u64 header length, then the JSON header), not a pickle or zip: the
    # first byte alone is the header length's lowest byte, which can be anything, 0x80 (pickle's mark) included
    header = int.from_bytes(blob[:8], "little")
    assert meta["safetensors_size"] == len(blob) and blob[8:9] == b"{" and 8 + header <= len(blob)
    assert json.loads(blob[8:8 + header])["__metadata__"]["audioclf_state"]
    tensors = load_file(run / "state" / "state.safetensors")
    assert tensors["rng.torch"].dtype == torch.uint8
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg") for k in tensors)
    assert any(k.startswith("ema.") for k in tensors) and any(k.startswith("model.") for k in tensors)
    # a torn pair (new tensors, old JSON) is detected and resolved with the copy inside the safetensors
    meta["safetensors_sha256"] = "0" * 64
    meta["epoch"] = 99
    (run / "state" / "state.json").write_text(json.dumps(meta))
    _, used = load_state(run)
    assert used["epoch"] == 3

    # --resume with different settings is refused with a clear error
    bad = subprocess.run(_cmd(data, run, cache, "--resume", "--lr", "0.1"), env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot resume: settings differ" in bad.stderr and "lr" in bad.stderr


@pytest.mark.slow
def test_resume_keeps_the_precision_the_run_started_with(tones, tmp_path):
    # bf16 autocast is chosen from the hardware; a run resumed elsewhere (or saved before that default) goes on in
    # the precision it started with, unless --amp / --no-amp says otherwise, which is refused as a changed setting
    from audioclf.training.settings import resolve_amp

    data, cache = tones
    started = not resolve_amp(None, torch.device("cpu"))  # what this machine would not pick by itself
    run, flag = tmp_path / "p", "--amp" if started else "--no-amp"
    first = subprocess.run(_cmd(data, run, cache, flag, "--epochs", "1"), env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(_cmd(data, run, cache, "--resume", "--epochs", "1"), env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["training"]["amp"] is started
    other = "--no-amp" if started else "--amp"
    bad = subprocess.run(_cmd(data, run, cache, "--resume", "--epochs", "1", other), env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and f"amp {started!r} -> {not started!r}" in bad.stderr


@pytest.mark.slow
def test_resume_keeps_the_automatic_settings_the_run_started_with(tones, tmp_path, monkeypatch, capsys):
    # the epochs (and the other settings chosen from the data) resume as the interrupted run chose them, also when
    # this version would choose otherwise: the schedule it was following ends where it would have
    import audioclf
    from audioclf.training import autoconfig

    data, cache = tones
    run = tmp_path / "auto"
    settings = dict(cache_dir=str(cache), batch_size=8, device="cpu", seed=0, amp=False)
    monkeypatch.setattr(autoconfig, "choose_epochs", lambda files, batch, model, *args: 2)
    audioclf.train(data, run, **settings)
    monkeypatch.setattr(autoconfig, "choose_epochs", lambda files, batch, model, *args: 4)  # another version's choice
    audioclf.train(data, run, resume=True, **settings)
    assert "auto: epochs=2 (kept from the interrupted run)" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["epochs"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2  # no epoch trained past the old schedule
