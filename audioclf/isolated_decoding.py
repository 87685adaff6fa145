"""Decode untrusted audio in worker processes, so a crash or a hang in a native decoder costs one call.

The server decodes uploads that libsndfile does not know (WebM/Opus from the web page's recorder, MP4/AAC, ...)
with PyAV, i.e. FFmpeg's parsers fed bytes from the network. A segmentation fault there would take the whole
server down with every request in flight; an endless loop would hold a thread for ever. :class:`DecoderPool`
keeps up to ``workers`` long-lived ``python -m audioclf.isolated_decoding`` processes (started on first use, each
with the decoders imported once), sends each one a job at a time, and turns a worker's death or a missed deadline
into :class:`IsolatedDecodeFailed` for that job alone; the worker is replaced on the next call.

The worker answers in plain data, never pickle: a JSON line, then the samples as little-endian float32, whose
count the parent bounds before reading. So a worker that misbehaves can send wrong numbers but cannot make the
server run anything. The worker runs with the server's privileges: this isolates crashes and hangs; it is not a
security sandbox.

Job:    ``{"sample_rate": int, "max_seconds": float | null, "block_samples"?: int, "path": str | null, "size": int}\\n``
        + ``size`` bytes of audio (when ``path`` is null)
Answer: ``{"samples": n}\\n`` + ``4 n`` bytes, or ``{"error": "AudioTooLong" | "AudioDecodeError", "reason": str}\\n``;
        with ``block_samples``, one such answer per block, then ``{"end": true}\\n`` (or an error)
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .audio import AudioDecodeError, AudioTooLong, NeedsFFmpeg, iter_blocks, read_audio, read_mono_limited

MAX_LINE = 1 << 16  # bytes of an answer's JSON line
UNLIMITED_SECONDS = 24 * 3600  # the most audio the parent accepts from a worker when the caller sets no limit


class IsolatedDecodeFailed(RuntimeError):
    """The worker died (``reason`` names the signal or exit status), missed the deadline or broke the protocol."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


WORKER_COMMAND = (sys.executable, "-m", "audioclf.isolated_decoding")


class _Worker:
    """One worker process and its pipes; :meth:`decode` or :meth:`stream` runs one job at a time."""

    def __init__(self, command):
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])  # importable from a source checkout too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.timed_out = False

    @property
    def alive(self) -> bool:
        return not self.timed_out and self.proc.poll() is None

    def decode(self, source, sample_rate: int, max_seconds: float | None, timeout: float) -> np.ndarray:
        """The whole decode of ``source`` as one answer."""
        limit = int((UNLIMITED_SECONDS if max_seconds is None else max_seconds) * sample_rate) + 1
        with self._deadline(timeout):
            self._send({"sample_rate": sample_rate, "max_seconds": max_seconds}, source)
            audio = self._receive(source, limit)
        if audio is None:
            raise IsolatedDecodeFailed("the worker answered the end of a stream to a whole decode")
        return audio

    def stream(self, source, sample_rate: int, block_samples: int, timeout: float) -> Iterator[np.ndarray]:
        """``source`` as mono blocks of ``block_samples`` (the last may be shorter), each within ``timeout``."""
        with self._deadline(timeout):
            self._send({"sample_rate": sample_rate, "max_seconds": None, "block_samples": block_samples}, source)
        while True:
            with self._deadline(timeout):
                block = self._receive(source, block_samples)
            if block is None:
                return
            yield block

    @contextmanager
    def _deadline(self, timeout: float):
        timer = threading.Timer(timeout, self._expire)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _send(self, job: dict, source) -> None:
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        job = {**job, "path": None if in_memory else os.fspath(source), "size": len(source) if in_memory else 0}
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            if in_memory:
                self.proc.stdin.write(source)
            self.proc.stdin.flush()
        except OSError:  # the worker is gone
            raise IsolatedDecodeFailed(self._failure()) from None

    def _receive(self, source, limit: int) -> np.ndarray | None:
        """One answer: float32 samples (at most ``limit``), or None for the end of a stream; the worker's refusal
        as AudioDecodeError / AudioTooLong; anything else as IsolatedDecodeFailed."""
        try:
            line = self.proc.stdout.readline(MAX_LINE)
            answer = json.loads(line) if line.endswith(b"\n") else None
        except (OSError, ValueError, RecursionError):  # a dead worker, or a line that is not our JSON
            answer = None
        if not isinstance(answer, dict):
            raise IsolatedDecodeFailed(self._failure())
        if "error" in answer:
            error = AudioTooLong if answer["error"] == "AudioTooLong" else AudioDecodeError
            raise error(source, str(answer.get("reason", "unknown error")))
        if answer.get("end") is True:
            return None
        samples = answer.get("samples")
        if not isinstance(samples, int) or not 0 < samples <= limit:
            raise IsolatedDecodeFailed(f"the worker announced {samples!r} samples (at most {limit} expected)")
        data = self.proc.stdout.read(4 * samples)
        if len(data) != 4 * samples:
            raise IsolatedDecodeFailed(self._failure())
        return np.frombuffer(data, dtype="<f4").astype(np.float32)

    def _expire(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def _failure(self) -> str:
        """Why the answer did not come (the worker is dead or about to be killed)."""
        if self.timed_out:
            return "no answer before the deadline"
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "the worker broke the protocol"
        if code < 0:
            try:
                return f"the decoder process was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"the decoder process was killed by signal {-code}"
        return f"the decoder process exited with status {code} without an answer"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class DecoderPool:
    """Up to ``workers`` decoder processes, started on demand; thread-safe, blocking (call from worker threads).
    ``timeout``: seconds a job may take before its worker is killed. ``command`` starts a worker (tests swap it)."""

    def __init__(self, workers: int = 2, timeout: float = 60.0, command=WORKER_COMMAND):
        self.timeout, self.command = timeout, command
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()

    def decode(self, source, sample_rate: int, max_seconds: float | None) -> np.ndarray:
        """:func:`audioclf.audio.read_mono_limited` of ``source`` (a path or the file's bytes) in a worker: mono
        float32 ``(samples,)``; ``max_seconds`` None: up to ``UNLIMITED_SECONDS``. Raises its AudioDecodeError /
        AudioTooLong, or IsolatedDecodeFailed."""
        with self._slots, self._worker() as worker:
            return worker.decode(source, sample_rate, max_seconds, self.timeout)

    def stream(self, source, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
        """:func:`audioclf.audio.iter_blocks` (mono) of ``source`` in a worker: float32 ``(1, block_samples)``
        blocks, the last shorter; memory stays flat for hours of audio. Each block has ``timeout`` seconds. The
        worker is held until the stream ends; one left unfinished is stopped, not reused."""
        with self._slots, self._worker() as worker:
            for block in worker.stream(source, sample_rate, block_samples, self.timeout):
                yield block[None, :]

    @contextmanager
    def _worker(self):
        """A worker for one job: given back after a whole answer or a clean refusal, otherwise stopped."""
        worker = self._take()
        try:
            yield worker
        except AudioDecodeError:
            self._give_back(worker)  # a clean refusal: the worker is fine and waits for its next job
            raise
        except BaseException:  # dead, late, out of step, or a stream left unfinished (GeneratorExit)
            worker.close()
            raise
        self._give_back(worker)

    def read_mono(self, path, sample_rate: int) -> np.ndarray:
        """A whole file as mono float32 ``(samples,)`` at ``sample_rate`` Hz: formats libsndfile reads in this
        process (:func:`audioclf.audio.read_audio`), the others in a worker; every failure, a worker's crash
        included, is an AudioDecodeError naming the file -- for batch jobs that skip bad files and go on."""
        try:
            return read_audio(path, sample_rate, mono=True, ffmpeg=False)[0]  # the header is parsed once
        except NeedsFFmpeg:
            pass
        try:
            return self.decode(path, sample_rate, None)
        except IsolatedDecodeFailed as e:
            raise AudioDecodeError(path, e.reason) from None

    def blocks(self, path, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
        """A file as mono float32 ``(1, n)`` blocks at ``sample_rate`` Hz, as :func:`audioclf.audio.iter_blocks`
        streams it: formats libsndfile reads in this process, the others in a worker; every failure, a worker's
        crash included, is an AudioDecodeError naming the file."""
        try:
            blocks = iter_blocks(path, sample_rate, block_samples, ffmpeg=False)  # opens the file now
        except NeedsFFmpeg:
            blocks = None
        if blocks is not None:
            yield from blocks
            return
        try:
            yield from self.stream(path, sample_rate, block_samples)
        except IsolatedDecodeFailed as e:
            raise AudioDecodeError(path, e.reason) from None

    def _take(self) -> _Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return _Worker(self.command)
            if worker.alive:
                return worker
            worker.close()

    def _give_back(self, worker: _Worker) -> None:
        if worker.alive:
            self._idle.put(worker)
        else:  # its deadline fired just after it answered
            worker.close()

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the idle workers (a later call starts new ones). A worker busy now stops when this process
        exits: its job pipe closes."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _serve(jobs, answers) -> None:
    """The worker's loop: one job in, one answer out, until the parent closes the pipe."""
    while True:
        line = jobs.readline()
        if not line:
            return
        job = json.loads(line)
        source = jobs.read(job["size"]) if job["path"] is None else job["path"]
        try:
            if job.get("block_samples"):
                for block in iter_blocks(source, job["sample_rate"], job["block_samples"]):
                    _write_samples(answers, block[0])
                answers.write(b'{"end": true}\n')
            else:
                _write_samples(answers, read_mono_limited(source, job["sample_rate"], job["max_seconds"]))
        except AudioDecodeError as e:
            kind = "AudioTooLong" if isinstance(e, AudioTooLong) else "AudioDecodeError"
            answers.write(json.dumps({"error": kind, "reason": e.reason}).encode() + b"\n")
        except Exception as e:  # noqa: BLE001 -- any decoder failure on untrusted bytes is a refusal
            answers.write(json.dumps({"error": "AudioDecodeError",
                                      "reason": f"{type(e).__name__}: {e}"}).encode() + b"\n")
        answers.flush()


def _write_samples(answers, audio: np.ndarray) -> None:
    audio = np.ascontiguousarray(audio, dtype="<f4")
    answers.write(json.dumps({"samples": int(audio.shape[0])}).encode() + b"\n")
    answers.write(audio.tobytes())


def main() -> None:
    # The answers go to a private copy of stdout; fd 1 itself goes to stderr, so nothing a library prints can
    # corrupt the protocol.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends (Ctrl-C hits the group)
    _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
