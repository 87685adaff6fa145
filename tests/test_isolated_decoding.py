"""audioclf.isolated_decoding: decoding in worker processes; crashes, hangs and lies become errors of one call."""
from __future__ import annotations

import io
import os
import signal
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import FSDD_CLIPS, write_with_pyav

from audioclf.audio import AudioDecodeError, AudioTooLong, read_audio, read_mono_limited
from audioclf.isolated_decoding import DecoderPool, IsolatedDecodeFailed


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


@pytest.fixture(scope="module")
def webm() -> bytes:
    buf = io.BytesIO()
    write_with_pyav(buf, "webm", "libopus", 48000, read_audio(FSDD_CLIPS[0], 48000)[0])
    return buf.getvalue()


@pytest.fixture
def pool():
    p = DecoderPool(workers=1, timeout=30)
    yield p
    p.close()


def worker_pids(pool) -> list[int]:
    return [w.proc.pid for w in list(pool._idle.queue)]


def test_decodes_as_the_parent_would_and_reuses_its_worker(pool, webm, tmp_path):
    expected = read_mono_limited(webm, 16000, 60)
    np.testing.assert_array_equal(pool.decode(webm, 16000, 60), expected)
    pid = worker_pids(pool)
    (tmp_path / "a.webm").write_bytes(webm)
    np.testing.assert_array_equal(pool.decode(tmp_path / "a.webm", 16000, 60), expected)
    assert worker_pids(pool) == pid and pid[0] != os.getpid()


def test_refusals_come_back_as_the_same_errors_and_keep_the_worker(pool, webm):
    with pytest.raises(AudioDecodeError) as in_process:
        read_mono_limited(b"not audio at all" * 10, 8000, 60)
    with pytest.raises(AudioDecodeError) as isolated:
        pool.decode(b"not audio at all" * 10, 8000, 60)
    assert isolated.value.reason == in_process.value.reason and isolated.value.path == "<160 bytes>"
    pid = worker_pids(pool)
    with pytest.raises(AudioTooLong, match="exceeds the limit of 0.1 s"):
        pool.decode(webm, 8000, 0.1)
    assert worker_pids(pool) == pid


def test_a_crash_fails_that_call_only():
    crashing = DecoderPool(command=python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    with pytest.raises(IsolatedDecodeFailed, match="killed by SIGSEGV"):
        crashing.decode(b"anything", 8000, 10)
    assert worker_pids(crashing) == []  # the dead worker is not kept


def test_a_hang_is_killed_at_the_deadline():
    hanging = DecoderPool(timeout=1, command=python("import time; time.sleep(60)"))
    start = time.monotonic()
    with pytest.raises(IsolatedDecodeFailed, match="no answer before the deadline"):
        hanging.decode(b"anything", 8000, 10)
    assert time.monotonic() - start < 15 and worker_pids(hanging) == []


@pytest.mark.parametrize("answer", ['{"samples": 999999999}', '{"samples": -1}', '"samples"', "not json",
                                    '{"samples": 100}', "[" * 30000])
def test_a_worker_that_lies_is_refused_before_its_data_is_read(answer):
    """Too many samples for the limit, nonsense, or fewer bytes than announced: never trusted."""
    code = f"import sys; sys.stdin.readline(); sys.stdout.write({answer!r} + '\\n'); sys.stdout.flush()"
    with pytest.raises(IsolatedDecodeFailed):
        DecoderPool(timeout=10, command=python(code)).decode(b"x", 8000, 10)


def test_what_a_library_prints_does_not_corrupt_the_answers(webm):
    """Anything written to fd 1 inside the worker goes to stderr, not into the answer stream."""
    code = ("import os, audioclf.isolated_decoding as m; real = m.read_mono_limited\n"
            "def noisy(*a):\n    os.write(1, b'chatter\\n'); print('more', flush=True); return real(*a)\n"
            "m.read_mono_limited = noisy; m.main()")
    noisy = DecoderPool(command=python(code))
    try:
        np.testing.assert_array_equal(noisy.decode(webm, 8000, 60), read_mono_limited(webm, 8000, 60))
    finally:
        noisy.close()


def test_close_stops_idle_workers(webm):
    p = DecoderPool()
    p.decode(webm, 8000, 60)
    proc = p._idle.queue[0].proc
    p.close()
    assert proc.poll() == -signal.SIGKILL
    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, np.float32), 8000, format="WAV")
    assert p.decode(buf.getvalue(), 8000, 60).shape == (800,)  # a closed pool starts a new worker
    p.close()


# --- streaming: long recordings block by block


def test_streams_the_same_blocks_as_iter_blocks(pool, webm, tmp_path):
    from audioclf.audio import iter_blocks

    expected = list(iter_blocks(webm, 16000, 1000))
    got = list(pool.stream(webm, 16000, 1000))
    assert [b.shape for b in got] == [b.shape for b in expected] and got[0].shape == (1, 1000)
    np.testing.assert_array_equal(np.concatenate(got, axis=1), np.concatenate(expected, axis=1))
    (tmp_path / "a.webm").write_bytes(webm)
    assert np.array_equal(np.concatenate(list(pool.blocks(tmp_path / "a.webm", 16000, 1000)), axis=1),
                          np.concatenate(expected, axis=1))
    flac = tmp_path / "a.flac"  # libsndfile's formats are streamed here, without a worker
    sf.write(flac, np.zeros(2500, np.float32), 8000)
    assert [b.shape for b in pool.blocks(flac, 8000, 1000)] == [(1, 1000), (1, 1000), (1, 500)]


def test_a_stream_left_unfinished_stops_its_worker(pool, webm):
    stream = pool.stream(webm, 16000, 500)
    next(stream)
    worker = stream.gi_frame.f_locals["worker"]
    stream.close()  # the worker is mid-stream: it cannot take another job
    assert worker.proc.poll() is not None and worker_pids(pool) == []
    assert len(list(pool.stream(webm, 16000, 500))) > 1  # a new worker serves the next one


def test_a_crash_mid_stream_fails_after_the_blocks_already_given():
    code = ("import os, signal, sys; sys.stdin.readline(); out = sys.stdout.buffer\n"
            "out.write(b'{\"samples\": 2}\\n' + bytes(8)); out.flush(); os.kill(os.getpid(), signal.SIGSEGV)")
    stream = DecoderPool(command=python(code)).stream(b"x", 8000, 100)
    assert next(stream).shape == (1, 2)
    with pytest.raises(IsolatedDecodeFailed, match="SIGSEGV"):
        next(stream)
    blocks = DecoderPool(command=python(code)).blocks(b"x" * 10, 8000, 100)
    next(blocks)
    with pytest.raises(AudioDecodeError, match="<10 bytes>: the decoder process was killed by SIGSEGV"):
        next(blocks)


def test_a_block_larger_than_asked_is_refused():
    code = "import sys; sys.stdin.readline(); sys.stdout.write('{\"samples\": 101}\\n'); sys.stdout.flush()"
    with pytest.raises(IsolatedDecodeFailed, match="at most 100 expected"):
        list(DecoderPool(timeout=10, command=python(code)).stream(b"x", 8000, 100))
