"""The libsndfile back end (``soundfile``): WAV, FLAC, Ogg, MP3, AIFF and the other formats it reads."""
from __future__ import annotations

import io
import os
import struct
import sys

import soundfile as sf

from .common import READ_FRAMES, SIZE_PLACEHOLDERS, AudioDecodeError, in_memory, source, to_layout

# Bytes per sample of the libsndfile subtypes whose frame count follows from the data chunk size.
PCM_WIDTH = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
              "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1}


def sf_source(path):
    """What libsndfile opens: :func:`source`, except that a file name the file-system encoding cannot encode (a
    Latin-1 name on a UTF-8 system, which Python holds with surrogates) goes as its raw bytes, which libsndfile
    opens as they are; soundfile would fail to encode it."""
    src = source(path)
    if isinstance(src, str) and os.name == "posix":
        try:
            src.encode(sys.getfilesystemencoding())
        except UnicodeEncodeError:
            return os.fsencode(src)
    return src


def sf_blocks(path, f: sf.SoundFile, mono):
    """From the open ``f`` (closed at the end): yield (rate, frames declared), then blocks; raise if fewer frames
    than the header announces."""
    with f:
        yield f.samplerate, f.frames
        expected = declared_frames(path, f.subtype, f.channels)
        if expected is None:  # libsndfile's MP3 frame count is only an estimate without Xing
            expected = 0 if f.format == "MP3" else f.frames
        read = 0
        while True:  # not f.blocks(): it yields uninitialised memory past a short read
            block = f.read(READ_FRAMES, dtype="float32", always_2d=True)
            if len(block):
                read += len(block)
                yield to_layout(block.T, mono)
            if len(block) < READ_FRAMES:  # the end (a short clip: no second, empty read)
                break
    if read < expected:
        raise AudioDecodeError(path, f"truncated: header says {expected} frames, "
                                     f"only {read} readable")


def declared_frames(path, subtype, channels) -> int | None:
    """Frames announced by a PCM WAV/AIFF data chunk (libsndfile silently clamps it to the file
    size, so a truncated file otherwise looks complete); None when unknown."""
    width = PCM_WIDTH.get(subtype)
    if width is None or channels <= 0:
        return None
    with (io.BytesIO(path) if in_memory(path) else open(path, "rb")) as fh:
        head = fh.read(12)
        if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
            endian, target = ("<" if head[:4] == b"RIFF" else ">"), b"data"
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            endian, target = ">", b"SSND"
        else:
            return None
        pos = 12
        for _ in range(1000):  # chunk walk; real files have a handful
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            size = struct.unpack(endian + "I", chunk[4:])[0]
            if chunk[:4] == target:
                if size in SIZE_PLACEHOLDERS:
                    return None
                if target == b"SSND":
                    size -= 8 + struct.unpack(">I", fh.read(4).ljust(4, b"\0"))[0]  # offset field
                return max(size, 0) // (width * channels)
            pos += 8 + size + (size & 1)
            fh.seek(pos)
    return None
