"""Disk full / unwritable output during training, and decoded-audio cache integrity."""
from __future__ import annotations

import contextlib
import errno
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclf.checkpoint import load_run
from audioclf.cli import main
from audioclf.data.cache import AudioCache

SR = 8000
TINY = ["--model", "cnn", "--width", "0.25", "--n-mels", "32", "--sample-rate", str(SR), "--clip-seconds", "0.25",
        "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--checkpoint-every", "2"]



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel") / "data"
    t = np.arange(int(0.3 * SR)) / SR
    for label, f in {"low": 300.0, "high": 2500.0}.items():
        (root / label).mkdir(parents=True)
        for i in range(12):
            sf.write(root / label / f"{i}.wav", (0.3 * np.sin(2 * np.pi * f * (1 + i / 100) * t)).astype(np.float32), SR)
    return root


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (needs root / CAP_SYS_ADMIN); None when it cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(data, tmp_path, small_fs, monkeypatch):
    cache = tmp_path / "cache"
    run = (small_fs or tmp_path) / "run"
    rc, out, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *TINY)
    assert rc == 0, err
    before = _snapshot(run)
    assert "model.safetensors" in before and "state/state.safetensors" in before
    if small_fs is not None:  # a real full disk
        _fill(small_fs)
    else:  # no tmpfs here: every new file fails as on a full disk
        import audioclf.io_utils as io_utils

        def full(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(io_utils, "_open_tmp", full)
    rc, out, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *TINY, "--resume")
    assert rc == 2
    assert err.startswith("audioclf train: error: cannot write ") and "disk full" in err, err
    if small_fs is not None:
        (small_fs / "filler").unlink()
    assert _snapshot(run) == before  # nothing changed, no temporary files left behind
    load_run(run)


def test_failed_state_write_keeps_the_previous_state(data, tmp_path, monkeypatch):
    """Writing RUN/state fails (read-only file system) at its first step checkpoint: clear error, old state kept."""
    import audioclf.io_utils as io_utils
    from audioclf.training import loop
    from audioclf.training.state import load_state

    cache, run = tmp_path / "cache", tmp_path / "run"
    three = [*TINY, "--epochs", "3"]  # the last --epochs counts
    real_step, steps = loop.train_step, []

    def interrupted(*args, **kwargs):  # Ctrl-C in the first step of epoch 2: epoch 1's state is on disk
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(loop, "train_step", interrupted)
    assert run_cli("train", data, "--out", run, "--cache-dir", cache, *three)[0] == 130
    monkeypatch.setattr(loop, "train_step", real_step)
    before = _snapshot(run / "state")
    real = io_utils._open_tmp

    def read_only(target):
        if target.parent.name == "state":
            raise OSError(errno.EROFS, "Read-only file system")
        return real(target)
    monkeypatch.setattr(io_utils, "_open_tmp", read_only)
    rc, out, err = run_cli("train", data, "--out", run, "--cache-dir", cache, *three, "--resume")
    assert rc == 2 and "audioclf train: error: cannot write" in err and "state.safetensors" in err
    assert "read-only file system" in err.lower()
    assert _snapshot(run / "state") == before
    assert load_state(run)[1]["epoch_done"]


def test_corrupted_cache_pack_is_rebuilt(data, tmp_path):
    paths = sorted(str(p) for p in data.rglob("*.wav"))[:4]
    first, bad = AudioCache(tmp_path, SR).load(paths)
    assert not bad
    expected = {p: np.array(v) for p, v in first.items()}
    (pack,) = (tmp_path / f"{SR}hz").glob("pack-*.f32")
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the crc32 check fails
    pack.write_bytes(bytes(raw))
    cache = AudioCache(tmp_path, SR)
    again, bad = cache.load(paths)
    assert not bad and len(cache.rejected_packs) == 1 and not pack.exists()
    for p in paths:
        np.testing.assert_array_equal(again[p], expected[p])  # decoded again, not the corrupted bytes
    assert AudioCache(tmp_path, SR).load(paths)[0].keys() == set(paths)
