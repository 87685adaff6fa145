"""Request bodies: a multipart form's ``file`` field or the raw body, counted against the size limit while it
streams in, kept in memory up to ``MEMORY_BODY_BYTES`` and spooled to a private folder past it; then decoded.

The multipart parsing is python-multipart's streaming parser driven here rather than Starlette's ``request.form()``,
which reads a whole body with no size limit and spools files to the shared temporary folder.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from functools import partial

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from ..audio import AudioDecodeError, AudioTooLong, NeedsFFmpeg, read_mono_limited
from ..isolated_decoding import DecoderPool, IsolatedDecodeFailed
from .errors import ApiError

log = logging.getLogger("audioclf.serving")

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


class Spool:
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


class Upload:
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
            spool = Spool(lambda: self._open(ctype))
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
        from python_multipart.multipart import MultipartParser

        if not boundary:
            raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
        part = FilePart(self._open)
        parser = MultipartParser(boundary, part.callbacks())
        try:
            async for chunk in self._chunks():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as e:
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {e}") from None
        finally:
            part.close()
        if not part.ended:
            raise ApiError(400, "bad_multipart", "malformed multipart body: it ends before the closing boundary")
        if not part.found:
            raise ApiError(400, "missing_file", "the multipart form has no field named 'file'")
        self.size, self.data = part.size, part.data
        if self.size == 0:
            raise ApiError(400, "empty_body", "the uploaded file is empty")

    def remove(self) -> None:
        self.data = b""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


async def decode_upload(source, sample_rate: int, max_seconds: float, decoders: DecoderPool) -> np.ndarray:
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
            # the loop is looked up only here: get_running_loop() checks the pid, a system call
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


class FilePart:
    """python-multipart callbacks that keep the first part named ``file`` (in memory, or spooled to a file from
    ``open_file(content_type)``) and skip the others."""

    def __init__(self, open_file):
        self.open_file = open_file
        self.field, self.value, self.headers = b"", b"", {}
        self.writing = self.found = self.ended = False
        self.spool: Spool | None = None
        self.size, self.data = 0, b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self):
        self.headers = {}

    def header_field(self, data, start, end):
        self.field += data[start:end]

    def header_value(self, data, start, end):
        self.value += data[start:end]

    def header_end(self):
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        if opts.get(b"name") == b"file" and not self.found:
            ctype, _ = parse_options_header(self.headers.get(b"content-type", b""))
            self.found = self.writing = True
            self.spool = Spool(lambda: self.open_file(ctype.decode("latin-1").lower()))

    def part_data(self, data, start, end):
        if self.writing:
            self.spool.write(data[start:end])
            self.size += end - start

    def part_end(self):
        if self.writing:
            self.writing = False
            self.spool.close()
            self.data = bytes(self.spool.buffer)

    def end(self):
        self.ended = True

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

