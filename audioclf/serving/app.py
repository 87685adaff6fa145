"""The HTTP service: a FastAPI app around a trained run, with micro-batching.

Endpoints
---------
``GET /``               the web page (``static/index.html``: upload, drag-and-drop or record, bars, event timeline)
``GET /health``         ``{"status": "ok", "model": "cnn", "labels": 10, "precision": "float32"}`` (``bf16``: ``--amp``)
``GET /v1/labels``      ``{"labels": [...], "task", "sample_rate", "clip_seconds"}``
``GET /v1/stats``       requests served, forward batches run and a histogram of batch sizes
``POST /v1/classify``   audio in, labels out; ``/docs`` has the OpenAPI page

``POST /v1/classify`` takes either a multipart form with the audio in the field ``file`` (``curl -F file=@x.wav``)
or the raw file as the request body, whatever its content type (``curl --data-binary @x.wav -H 'Content-Type:
audio/wav'``). Any format :func:`audioclf.audio.read_audio` decodes is accepted. The answer:

one JSON object of the same shape for audio of every length,
``{"predictions": [{"label", "score"}, ...], "events": [...], "duration": s, "window": s}``:

* ``predictions``: best first, the top ``top_k`` labels (``Classifier.predict``'s default unless ``--top-k`` or the
  query says otherwise), and for multi-label runs also every further label at or above its threshold, for the
  whole recording (the half-overlapping windows' logits averaged, as ``Classifier.predict``);
* ``events``: ``[{"label", "start", "end", "peak"}]`` from :func:`audioclf.longform.events` over those windows
  (query ``threshold``, ``median_filter``, ``min_duration``); audio no longer than the window is one window;
* ``duration``: the audio's length and ``window``: the model's window, in seconds.

Errors are JSON ``{"error": slug, "detail": text}``: 400 (malformed multipart, no ``file`` field, empty body, bad
query), 413 (body over ``max_body_mb`` -- checked on ``Content-Length`` up front and counted while the body
streams in, so a client that sends more than it announced, or no length at all, is cut off -- or audio longer
than ``max_seconds``), 415 (not decodable audio), 503 (request queue full; ``Retry-After: 1``).

Uploads up to ``MEMORY_BODY_BYTES`` (1 MiB: about a minute of FLAC at 16 kHz) stay in memory and are decoded
there. Larger ones are written only to a private folder (``tempfile.mkdtemp``, mode 0700; ``app.state.upload_dir``),
under a random name (the client's file name is never used), and deleted as soon as the request is done.

Decoding: uploads libsndfile reads (WAV, FLAC, Ogg, MP3, ...) are decoded in this process: short ones on the event
loop, others in a worker thread (a plain WAV held in memory is read in place, about 10 us for an FSDD clip). Those
only FFmpeg reads (WebM/Opus from the page's recorder, MP4/AAC, ...) are decoded by PyAV in worker processes
(:mod:`audioclf.isolated_decoding`): FFmpeg's parsers fed untrusted bytes can crash or hang, and then that request
gets a 415 while the server goes on.

Micro-batching: decoded clips go into a bounded ``asyncio.Queue``; one worker task takes what is queued, waits
for requests still being received or decoded to join (up to ``max_batch``) until the oldest one has been queued
for ``max_wait_ms`` (so under load, when it has waited through the previous pass, nothing waits), runs one forward
pass over all their windows, and resolves each request's future. It does not wait when no other request is in
flight, so a lone request pays no batching delay. ``micro_batching=False`` sends every request through the same
worker alone (batch size 1), for comparison. ``app.state.batch_sizes`` counts batches by size.

Forward passes run on the event loop itself, one model call of at most
:func:`audioclf.inference.inference_batch_size` windows at a time (12 windows of the default FSDD model on a CPU,
24 under ``--amp``; about 5 ms on two cores), and the loop takes in other requests between calls, so a long
recording never stalls the server for more than one call. No model thread: it would contend with the event loop
for the GIL, which PyTorch takes back between operators (a 16-window pass took 10 ms alone and over 200 ms beside a
busy Python thread; ``bench/gil.py``), and while a second thread that ran a pass lives, its OpenMP team makes every
multi-threaded pass on the loop's thread about 3x slower (libgomp stops spinning once it has more threads than
cores; ``bench/gil.py``). Inline, a call has the GIL and every core to itself: 1.3x the requests/s at concurrency
32 of the model thread this replaced, with micro-batching and without it (``bench/serving.py``; docs/experiments.md).

``POST /v1/classify`` is dispatched to its endpoint before FastAPI's and Starlette's middleware and routing
(:class:`_Service`): the server floor (everything but the model) went from about 3,300 to 4,500 requests/s.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..audio import AudioDecodeError, AudioTooLong, NeedsFFmpeg, read_mono_limited
from ..data.windows import window_starts, windows
from ..isolated_decoding import DecoderPool, IsolatedDecodeFailed
from ..predictions import DEFAULT_TOP_K

log = logging.getLogger("audioclf.serving")

STATIC = Path(__file__).resolve().parent / "static"
CLASSIFY_PATH = "/v1/classify"
MEMORY_BODY_BYTES = 1 << 20  # uploads up to this size stay in memory; larger ones spool to a private temp file
INLINE_DECODE_BYTES = 256 << 10  # in-memory uploads up to this size and INLINE_DECODE_SECONDS long (as declared)
INLINE_DECODE_SECONDS = 30.0     # are decoded on the event loop (well under a millisecond for a short clip)
ISOLATED_DECODE_SECONDS = 60.0   # a decode in a worker process (formats only FFmpeg reads) is killed after this
_SUFFIXES = {  # content type -> temp-file suffix (a hint for the decoders; content is probed anyway)
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav",
    "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg", "audio/opus": ".opus",
    "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/webm": ".webm", "video/webm": ".webm",
    "audio/mp4": ".m4a", "audio/x-m4a": ".m4a", "audio/aac": ".aac", "audio/aiff": ".aiff",
    "audio/x-aiff": ".aiff",
}


class ApiError(Exception):
    """An error answer: ``status`` with JSON ``{"error": error, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _error(status: int, error: str, detail, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def error_response(exc: Exception) -> JSONResponse:
    """The answer to an exception raised by an endpoint: an :class:`ApiError`'s own status, anything else a 500
    (logged with its traceback)."""
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.error, exc.detail, exc.headers)
    log.error("unhandled error", exc_info=exc)
    return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")


_SLUGS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
          415: "unsupported_media", 503: "overloaded"}


# --------------------------------------------------------------------------------------------- batching

@dataclass
class _Item:
    clip: np.ndarray
    future: asyncio.Future
    windows: bool  # also return per-window scores (long audio)
    queued_at: float = 0.0  # event-loop time it was queued


@dataclass
class _Result:
    scores: np.ndarray  # (classes,) whole clip
    times: np.ndarray | None = None  # (windows, 2) seconds
    window_scores: np.ndarray | None = None  # (windows, classes)


@dataclass
class Batcher:
    """The request queue and its worker task (bound to the running event loop, restarted if the loop changes)."""

    classifier: object
    max_batch: int = 32
    max_wait_ms: float = 10.0
    queue_size: int = 256
    micro_batching: bool = True
    batch_sizes: Counter = field(default_factory=Counter)
    incoming: int = 0  # requests received but not yet queued (body upload, decoding)
    served: int = 0

    def __post_init__(self):
        from ..inference import inference_batch_size

        clf = self.classifier
        # windows per model call at most
        self._cap = inference_batch_size(clf.model, clf.clip_samples, clf.device, clf.amp)
        self._loop = self._queue = self._task = None
        self._arrived: asyncio.Event | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker on ``loop``, the running loop (looked up when None), unless it runs there already."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._queue, self._arrived = loop, asyncio.Queue(self.queue_size), asyncio.Event()
        self._task = loop.create_task(self._run(), name="audioclf-batcher")

    async def stop(self) -> None:
        task, queue = self._task, self._queue
        if self._loop is not asyncio.get_running_loop():
            return  # started in another (finished) event loop: nothing to stop here
        self._task = self._loop = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while queue is not None and not queue.empty():
            item = queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ApiError(503, "overloaded", "the server is shutting down"))

    def announce(self) -> None:
        """A request has started arriving: the worker may wait (up to max_wait_ms) for it to join a batch."""
        self.incoming += 1

    def withdraw(self) -> None:
        self.incoming -= 1
        if self._arrived is not None:
            self._arrived.set()

    async def submit(self, clip: np.ndarray, with_windows: bool) -> _Result:
        """Queue one decoded clip (the caller has called :meth:`announce`); raises ApiError 503 when full."""
        loop = asyncio.get_running_loop()
        self.start(loop)
        item = _Item(clip, loop.create_future(), with_windows, loop.time())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise ApiError(503, "overloaded", f"the request queue is full ({self.queue_size} waiting); retry "
                                              "later", {"Retry-After": "1"}) from None
        finally:
            self.withdraw()
        return await item.future

    async def _run(self) -> None:
        loop, queue = asyncio.get_running_loop(), self._queue
        while True:
            batch = [await queue.get()]
            if self.micro_batching:
                # max_wait_ms counts from when the oldest request was queued, not from now: one that already
                # waited through the previous forward pass goes at once, so a loaded model never idles
                deadline = batch[0].queued_at + self.max_wait_ms / 1000
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if self.incoming <= 0 or remaining <= 0:
                        break
                    self._arrived.clear()
                    try:  # woken by a new item or by a request that gave up before queueing
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
            batch = [item for item in batch if not item.future.done()]  # clients gone
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await self._forward(batch)
            except Exception as e:  # noqa: BLE001 -- every waiting request gets the error
                log.exception("forward pass failed")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self.served += len(batch)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _logits(self, stacked: np.ndarray) -> np.ndarray:
        """One model call: logits ``(windows, classes)`` for float32 windows ``(windows, clip_samples)``. The model is
        in eval mode since ``load`` built it; nothing here switches it."""
        return self.classifier.logits(stacked)

    async def _forward(self, batch: list[_Item]) -> list[_Result]:
        """One forward pass over every window of every clip, in model calls of at most ``inference_batch_size``
        windows with the event loop free between them; scores as ``Classifier.scores`` computes them."""
        from ..inference import scores_from_logits

        clf = self.classifier
        length = clf.clip_samples
        per_clip = [windows(item.clip, length) for item in batch]
        owner = np.repeat(np.arange(len(batch)), [len(w) for w in per_clip])
        stacked = np.concatenate(per_clip)
        chunk = -(-len(stacked) // -(-len(stacked) // self._cap))  # in equal parts: 25 windows, cap 20 -> 13 + 12
        parts = []
        for start in range(0, len(stacked), chunk):
            if start:
                await asyncio.sleep(0)  # other requests get the loop between model calls
            parts.append(self._logits(stacked[start:start + chunk]))
        logits = np.concatenate(parts)
        sums = np.zeros((len(batch), logits.shape[1]))
        np.add.at(sums, owner, logits)
        counts = np.bincount(owner, minlength=len(batch))
        clip_scores = scores_from_logits(sums / counts[:, None], clf.multilabel)
        out = []
        for i, item in enumerate(batch):
            result = _Result(clip_scores[i])
            if item.windows:
                n, sr = len(item.clip), clf.sample_rate
                starts = np.asarray(window_starts(n, length), dtype=np.float64)
                result.times = np.stack([starts, starts + min(n, length)], axis=1) / sr
                result.window_scores = scores_from_logits(logits[owner == i].astype(np.float64), clf.multilabel)
            out.append(result)
        return out


# --------------------------------------------------------------------------------------------- request bodies

class _Spool:
    """Collect an upload in memory; past ``MEMORY_BODY_BYTES`` move it to a file from ``open_file()``."""

    def __init__(self, open_file):
        self._open_file, self.buffer, self.file = open_file, bytearray(), None

    def write(self, data: bytes) -> None:
        if self.file is None and len(self.buffer) + len(data) <= MEMORY_BODY_BYTES:
            self.buffer += data
            return
        if self.file is None:
            self.file = self._open_file()
            self.file.write(self.buffer)
            self.buffer = bytearray()
        self.file.write(data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Upload:
    """Receive a request body (multipart or raw), counting bytes: in memory, or spooled to a private temp file."""

    def __init__(self, request: Request, upload_dir: str, max_bytes: int):
        self.request, self.upload_dir, self.max_bytes = request, upload_dir, max_bytes
        self.path: str | None = None  # the temp file, when the body was spooled to one
        self.data = b""  # the body, when it stayed in memory
        self.size = 0  # audio bytes received

    def _check_length(self) -> None:
        header = self.request.headers.get("content-length")
        if header is None:
            return
        try:
            length = int(header)
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {header[:40]!r}") from None
        if length > self.max_bytes:
            raise ApiError(413, "too_large", f"request body of {length} bytes exceeds the limit of "
                                             f"{self.max_bytes} bytes")

    async def _chunks(self):
        received = 0
        try:
            async for chunk in self.request.stream():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ApiError(413, "too_large", f"request body exceeds the limit of {self.max_bytes} bytes")
                if chunk:
                    yield chunk
        except ClientDisconnect:
            raise ApiError(400, "bad_request", "the client disconnected before sending the whole body") from None

    def _open(self, content_type: str):
        os.makedirs(self.upload_dir, mode=0o700, exist_ok=True)
        suffix = _SUFFIXES.get(content_type, "")
        f = tempfile.NamedTemporaryFile(dir=self.upload_dir, prefix="upload-", suffix=suffix, delete=False)
        self.path = f.name
        return f

    async def receive(self):
        """Receive the audio: returns its bytes, or the path of the temp file it was spooled to."""
        from python_multipart.multipart import parse_options_header

        self._check_length()
        ctype, params = parse_options_header(self.request.headers.get("content-type", ""))
        ctype = ctype.decode("latin-1").lower()
        if ctype == "multipart/form-data":
            await self._multipart(params.get(b"boundary"))
        else:
            spool = _Spool(lambda: self._open(ctype))
            try:
                async for chunk in self._chunks():
                    spool.write(chunk)
                    self.size += len(chunk)
            finally:
                spool.close()
            self.data = bytes(spool.buffer)
            if self.size == 0:
                raise ApiError(400, "empty_body", "the request body is empty: send audio as the body or as the "
                                                  "multipart field 'file'")
        return self.path or self.data

    async def _multipart(self, boundary: bytes | None) -> None:
        from python_multipart.exceptions import MultipartParseError
        from python_multipart.multipart import MultipartParser, parse_options_header

        if not boundary:
            raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
        state = {"field": b"", "value": b"", "headers": {}, "writing": False, "found": False, "ended": False,
                 "file": None}

        def on_part_begin():
            state["headers"] = {}

        def on_header_field(data, start, end):
            state["field"] += data[start:end]

        def on_header_value(data, start, end):
            state["value"] += data[start:end]

        def on_header_end():
            state["headers"][state["field"].lower()] = state["value"]
            state["field"] = state["value"] = b""

        def on_headers_finished():
            _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
            if opts.get(b"name") == b"file" and not state["found"]:
                ctype, _ = parse_options_header(state["headers"].get(b"content-type", b""))
                state["found"] = state["writing"] = True
                state["file"] = _Spool(lambda: self._open(ctype.decode("latin-1").lower()))

        def on_part_data(data, start, end):
            if state["writing"]:
                state["file"].write(data[start:end])
                self.size += end - start

        def on_part_end():
            if state["writing"]:
                state["writing"] = False
                state["file"].close()
                self.data = bytes(state["file"].buffer)

        def on_end():
            state["ended"] = True

        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end})
        try:
            async for chunk in self._chunks():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as e:
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {e}") from None
        finally:
            if state["file"] is not None:
                state["file"].close()
        if not state["ended"]:
            raise ApiError(400, "bad_multipart", "malformed multipart body: it ends before the closing boundary")
        if not state["found"]:
            raise ApiError(400, "missing_file", "the multipart form has no field named 'file'")
        if self.size == 0:
            raise ApiError(400, "empty_body", "the uploaded file is empty")

    def remove(self) -> None:
        self.data = b""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


async def _decode_upload(source, sample_rate: int, max_seconds: float, decoders: DecoderPool) -> np.ndarray:
    """Mono float32 ``(samples,)`` of an upload (bytes, or the path it was spooled to); ApiError 413 / 415.

    A small upload libsndfile reads whose header declares a short clip is decoded right here, cheaper than a hop to
    a worker thread (a longer one is refused at its header and goes to a thread); a large one in a worker thread;
    one that only FFmpeg reads (WebM/Opus, MP4/AAC, ...) in a decoder process. Each path opens the file once."""
    try:
        try:
            if isinstance(source, bytes) and len(source) <= INLINE_DECODE_BYTES:
                limit = min(max_seconds, INLINE_DECODE_SECONDS)
                try:
                    return read_mono_limited(source, sample_rate, limit, ffmpeg=False)
                except AudioTooLong:
                    if limit >= max_seconds:
                        raise
            # the loop is looked up only here: get_running_loop() checks the pid, a system call (1.4% of a loaded
            # server's samples when every request made it)
            return await asyncio.get_running_loop().run_in_executor(
                None, partial(read_mono_limited, source, sample_rate, max_seconds, ffmpeg=False))
        except NeedsFFmpeg:
            return await asyncio.get_running_loop().run_in_executor(None, decoders.decode, source, sample_rate,
                                                                    max_seconds)
    except AudioTooLong as e:
        raise ApiError(413, "too_long", e.reason) from None
    except IsolatedDecodeFailed as e:
        log.warning("decoder process failed: %s", e.reason)
        raise ApiError(415, "unsupported_media", f"cannot decode the audio: {e.reason}") from None
    except AudioDecodeError as e:
        raise ApiError(415, "unsupported_media", f"cannot decode the audio: {e.reason}") from None
    except Exception as e:  # noqa: BLE001 -- untrusted bytes: any decoder failure is a bad upload
        log.warning("decoder failed: %s: %s", type(e).__name__, e)
        raise ApiError(415, "unsupported_media", f"cannot decode the audio ({type(e).__name__})") from None


# --------------------------------------------------------------------------------------------- the app

_CLASSIFY_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@dataclass(frozen=True)
class _QueryParam:
    name: str
    type: type  # int or float
    default: float | None
    low: float
    high: float | None
    description: str
    odd: bool = False


_QUERY = (  # /v1/classify's query parameters, parsed by _query and documented by _query_openapi. FastAPI's own
    # per-request parameter solving took 28% of the event loop's CPU under load (cProfile, thread CPU time).
    _QueryParam("top_k", int, None, 1, None, "labels to return at least (multi-label runs add those above their thresholds); default {top_k}"),
    _QueryParam("threshold", float, None, 0, 1, "event threshold (long audio); default 0.5, or the run's per-label "
                                                "thresholds"),
    _QueryParam("median_filter", int, 1, 1, 99, "odd median-filter size over windows (long audio)", odd=True),
    _QueryParam("min_duration", float, 0.0, 0, None, "drop shorter events, seconds"),
)


def _query(params) -> dict:
    """Name -> value of every :data:`_QUERY` parameter, from the request's query parameters (defaults for those
    absent); ApiError 400 naming a bad one."""
    values = {}
    for p in _QUERY:
        raw = params.get(p.name)
        if raw is None:
            values[p.name] = p.default
            continue
        try:
            value = p.type(raw)
        except ValueError:
            kind = "an integer" if p.type is int else "a number"
            raise ApiError(400, "bad_request", f"query parameter {p.name}: not {kind}: {raw!r}") from None
        if not (value >= p.low and (p.high is None or value <= p.high)):  # also refuses NaN
            bounds = f"at least {p.low}" if p.high is None else f"between {p.low} and {p.high}"
            raise ApiError(400, "bad_request", f"query parameter {p.name}: must be {bounds}, got {raw}")
        if p.odd and value % 2 == 0:
            raise ApiError(400, "bad_request", f"query parameter {p.name}: must be odd, got {raw}")
        values[p.name] = value
    return values


def _query_openapi(top_k: int) -> list[dict]:
    """:data:`_QUERY` as OpenAPI parameter objects."""
    out = []
    for p in _QUERY:
        schema = {"type": "integer" if p.type is int else "number", "minimum": p.low}
        if p.high is not None:
            schema["maximum"] = p.high
        if p.default is not None:
            schema["default"] = p.default
        out.append({"name": p.name, "in": "query", "required": False, "schema": schema,
                    "description": p.description.format(top_k=top_k)})
    return out


_CLASSIFY_RESPONSES = {
    200: {"description": "`{predictions, events, duration, window}` for audio of every length.",
          "content": {"application/json": {"example": {
              "predictions": [{"label": "3", "score": 0.91}, {"label": "8", "score": 0.04}],
              "events": [{"label": "3", "start": 0.0, "end": 0.75, "peak": 0.93}], "duration": 0.62,
              "window": 0.75}}}},
    400: {"description": "Malformed multipart, no `file` field, empty body or bad query"},
    413: {"description": "Body over the size limit or audio over the duration limit"},
    415: {"description": "Not decodable audio"},
    503: {"description": "Request queue full"},
}


def create_app(run_dir, max_batch: int = 32, max_wait_ms: float = 10, queue_size: int = 256,
               max_body_mb: float = 20, max_seconds: float = 600, micro_batching: bool = True,
               top_k: int = DEFAULT_TOP_K, device: str = "cpu", amp: bool = False) -> FastAPI:
    """The service for the run in ``run_dir``; see the module docstring. The model is loaded here."""
    from contextlib import asynccontextmanager

    from ..inference import load

    if max_batch < 1 or queue_size < 1 or max_wait_ms < 0 or max_body_mb <= 0 or max_seconds <= 0 or top_k < 1:
        raise ValueError("max_batch, queue_size, max_body_mb, max_seconds and top_k must be positive, "
                         "max_wait_ms >= 0")
    clf = load(run_dir, device, amp)
    members = clf.config.get("member_models")  # an ensemble: "cnn+crnn+cnn"
    model_name = "+".join(m["model"] for m in members) if members else clf.config.get("model", "model")
    batcher = Batcher(clf, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                      micro_batching=micro_batching)
    upload_dir = tempfile.mkdtemp(prefix="audioclf-serve-")
    decoders = DecoderPool(timeout=ISOLATED_DECODE_SECONDS)  # for uploads only FFmpeg reads; started on demand
    max_bytes = int(max_body_mb * 1024 * 1024)
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.close()
            shutil.rmtree(upload_dir, ignore_errors=True)

    app = _Service(title="audioclf", version=_version(), docs_url=None, redoc_url=None,
                   description=f"Audio classification with the `{model_name}` model of `{Path(run_dir).name}` "
                               f"({len(clf.labels)} labels). POST audio to `/v1/classify`.",
                   lifespan=lifespan)
    app.state.classifier, app.state.batcher, app.state.upload_dir = clf, batcher, upload_dir
    app.state.decoders = decoders
    app.state.batch_sizes = batcher.batch_sizes
    app.state.limits = {"max_body_bytes": max_bytes, "max_seconds": max_seconds}
    weakref.finalize(app, shutil.rmtree, upload_dir, ignore_errors=True)
    weakref.finalize(app, decoders.close)

    @app.exception_handler(ApiError)
    @app.exception_handler(Exception)
    async def _answer_error(request, exc: Exception):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, _SLUGS.get(exc.status_code, "error"), exc.detail,
                      getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(400, "bad_request", detail)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    add_docs_page(app)

    @app.get("/health", summary="Liveness and the model served")
    async def health():
        return {"status": "ok", "model": model_name, "labels": len(clf.labels),
                "precision": "bf16" if clf.amp else "float32"}

    @app.get("/v1/labels", summary="The labels the model predicts")
    async def labels():
        return {"labels": clf.labels, "task": "multi_label" if clf.multilabel else "single_label",
                "sample_rate": clf.sample_rate, "clip_seconds": clf.clip_samples / clf.sample_rate}

    @app.get("/v1/stats", summary="Requests served and forward-pass batch sizes")
    async def stats():
        batches = sum(batcher.batch_sizes.values())
        return {"served": batcher.served, "batches": batches,
                "mean_batch": batcher.served / batches if batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())},
                "micro_batching": batcher.micro_batching, "max_batch": batcher.max_batch,
                "max_wait_ms": batcher.max_wait_ms}

    @app.post(CLASSIFY_PATH, summary="Classify an audio file", responses=_CLASSIFY_RESPONSES,
              openapi_extra={"requestBody": _CLASSIFY_BODY, "parameters": _query_openapi(top_k)})
    async def classify(request: Request):
        """Audio as the multipart field `file`, or as the raw request body (any content type).

        Returns `{"predictions": [{"label", "score"}], "events": [{"label", "start", "end", "peak"}], "duration",
        "window"}` for audio of every length (predictions best first; times in seconds).
        """
        query = _query(request.query_params)
        k = min(query["top_k"] or top_k, len(clf.labels))
        upload = _Upload(request, upload_dir, max_bytes)
        batcher.announce()
        queued = False
        try:
            source = await upload.receive()
            try:
                clip = await _decode_upload(source, clf.sample_rate, max_seconds, decoders)
            finally:
                upload.remove()
            queued = True
            result = await batcher.submit(clip, True)
        finally:
            upload.remove()
            if not queued:
                batcher.withdraw()
        preds = clf.ranked(result.scores, k)
        from ..longform import events as find_events
        thr = query["threshold"]
        if thr is None:
            thr = clf.thresholds if clf.multilabel else 0.5
        found = find_events(result.times, result.window_scores, clf.labels, threshold=thr,
                            min_duration=query["min_duration"], median_filter=query["median_filter"])
        return JSONResponse({"predictions": preds, "events": found, "duration": len(clip) / clf.sample_rate,
                             "window": clf.clip_samples / clf.sample_rate})

    app.classify = classify
    return app


def add_docs_page(app: FastAPI) -> None:
    """``/docs``: the OpenAPI page with its Swagger UI assets served from the ``swagger-ui-bundle`` package under
    ``/docs-assets``, so the page works with no internet (FastAPI's own loads them from a CDN)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


class _Service(FastAPI):
    """The FastAPI app, with ``POST /v1/classify`` handed straight to its endpoint (:attr:`classify`) before
    FastAPI's and Starlette's middleware and routing, which took 17% of the event loop's samples under load
    (docs/experiments.md). The route stays declared for the OpenAPI page; other methods on its path
    reach the router as usual (405). Errors are answered as the app's exception handlers answer them
    (:func:`error_response`)."""

    classify: Callable[[Request], Awaitable[Response]]  # the endpoint, set by create_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CLASSIFY_PATH:
            return await super().__call__(scope, receive, send)
        try:
            response = await self.classify(Request(scope, receive, send))
        except Exception as exc:  # noqa: BLE001 -- answered as the app's handlers answer it
            response = error_response(exc)
        await response(scope, receive, send)


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "0"
