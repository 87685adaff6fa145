"""Shared test set-up."""
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FSDD_CLIPS = sorted(str(p) for p in (REPO / "datasets" / "fsdd" / "recordings").glob("*.flac"))[::150][:12]
FSDD_LABELS = [str(d) for d in range(10)]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a small shared machine, threads fighting over busy cores make tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(run, log_path, *extra_args):
    """``audioclf serve RUN`` in a subprocess on a free loopback port; yields its base URL once /health answers."""
    import httpx
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "audioclf", "serve", str(run), "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", *extra_args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{Path(log_path).read_text()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health in 60 s:\n{Path(log_path).read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_tiny_run(path: Path, clips, sample_rate: int = 8000) -> Path:
    """An untrained small CNN over the 10 FSDD labels, with batch-norm statistics from real ``clips``; a run folder."""
    import numpy as np
    from audioclf.audio import read_audio
    from audioclf.augment import AugmentConfig
    from audioclf.checkpoint import save_run
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model
    labels = [str(d) for d in range(10)]
    torch.manual_seed(0)
    model = create_model("cnn", len(labels), frontend=FrontendConfig(sample_rate=sample_rate, n_mels=32),
                         augment=AugmentConfig.off(), width=0.25)
    batch = np.stack([np.resize(read_audio(p, sample_rate)[0], 6000) for p in clips])
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    model.eval()
    save_run(path, model, {"labels": labels, "clip_seconds": 0.75, "task": "single_label"})
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A module's run folder from :func:`make_tiny_run` over a dozen bundled FSDD clips (8 kHz)."""
    if len(FSDD_CLIPS) < 8:
        pytest.skip("the bundled FSDD recordings are missing")
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"), FSDD_CLIPS)


def run_cli(*argv) -> tuple[int, str, str]:
    """``audioclf ARGV...`` in this process, argparse's exits included: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from audioclf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own exits: --help, --version, a bad flag
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def write_with_pyav(path, container_format: str, codec: str, sr: int, x: np.ndarray):
    """Encode mono float ``x`` with PyAV into ``path`` (a file path or a writable binary file object)."""
    av = pytest.importorskip("av")
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"FFmpeg build has no {codec} encoder")
    with av.open(path if hasattr(path, "write") else str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def write_speech_commands(root, sr: int = 8000) -> None:
    """Speech Commands' layout, in small: ``<word>/<speaker>_nohash_<n>.wav`` (2 words x 4 speakers x 2 tones of
    0.25 s), one second of noise in ``_background_noise_/``, and split lists naming the last speaker ``testing``
    and the third ``validation``."""
    import soundfile as sf

    root = Path(root)
    t = np.arange(sr // 4) / sr
    for w, word in enumerate(("no", "yes")):
        (root / word).mkdir(parents=True, exist_ok=True)
        for s, speaker in enumerate(("0a1b2c3d", "4e5f6a7b", "8c9d0e1f", "a2b3c4d5")):
            for n in range(2):
                tone = 0.3 * np.sin(2 * np.pi * (300 + 600 * w + 10 * s) * t + n)
                sf.write(root / word / f"{speaker}_nohash_{n}.wav", tone.astype(np.float32), sr)
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "white_noise.wav",
             np.random.default_rng(0).normal(0, 0.1, sr).astype(np.float32), sr)
    for name, speaker in (("testing_list.txt", "a2b3c4d5"), ("validation_list.txt", "8c9d0e1f")):
        (root / name).write_text("".join(f"{word}/{speaker}_nohash_{n}.wav\n" for word in ("no", "yes")
                                         for n in range(2)))


@pytest.fixture
def tone_set(tmp_path):
    """``(root, rows)``: the tone set written under ``tmp_path/tones`` (:func:`tones.write_tone_set`)."""
    from tones import write_tone_set
    root = tmp_path / "tones"
    return root, write_tone_set(root)
