"""Plain PCM or float WAV held in memory, read in place by numpy to the values libsndfile gives (the common
upload, without opening libsndfile)."""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from .common import READ_FRAMES, SIZE_PLACEHOLDERS, to_layout

WAVE_SUBFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # of the PCM and IEEE-float GUIDs
WAV_SAMPLES = {(1, 8): ("u1", -128.0, 2.0 ** -7), (1, 16): ("<i2", 0.0, 2.0 ** -15), (1, 24): ("i3", 0.0, 2.0 ** -31),
                (1, 32): ("<i4", 0.0, 2.0 ** -31), (3, 32): ("<f4", 0.0, 1.0), (3, 64): ("<f8", 0.0, 1.0)}


class PlainWav(NamedTuple):
    rate: int  # Hz
    frames: int
    channels: int
    samples: memoryview  # the data chunk's ``frames * channels`` samples, interleaved
    dtype: str  # numpy's, or "i3": packed 24-bit
    offset: float  # float32 value = (sample + offset) * scale, as libsndfile converts
    scale: float


def plain_wav(data) -> PlainWav | None:
    """An in-memory little-endian WAV holding integer PCM (8/16/24/32 bits) or IEEE float (32/64 bits), its
    ``fmt `` chunk first and its ``data`` chunk complete; else None: anything else, every damaged file included,
    goes to libsndfile, which reads or reports it."""
    view = memoryview(data).cast("B")
    if len(view) < 44 or view[:4] != b"RIFF" or view[8:12] != b"WAVE" or view[12:16] != b"fmt ":
        return None
    fmt_size = struct.unpack_from("<I", view, 16)[0]
    if fmt_size not in (16, 18, 40):
        return None
    tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", view, 20)
    if tag == 0xFFFE and fmt_size == 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format decides; all bits valid
        valid, tag = struct.unpack_from("<H4xH", view, 38)
        if valid != bits or view[46:60] != WAVE_SUBFORMAT_TAIL:
            return None
    if ((tag, bits) not in WAV_SAMPLES or not 0 < channels <= 1024 or not 0 < rate < 2 ** 31  # libsndfile's limits
            or align != channels * bits // 8):
        return None
    pos = 20 + fmt_size
    while pos + 8 <= len(view):  # past other chunks (fact, LIST, PEAK, ...) to the data chunk
        chunk_id, size = view[pos:pos + 4], struct.unpack_from("<I", view, pos + 4)[0]
        if chunk_id == b"data":
            frames = size // align
            if frames == 0 or size in SIZE_PLACEHOLDERS or pos + 8 + size > len(view):
                return None  # no frames, streamed or truncated: libsndfile's checks read or report it
            samples = view[pos + 8:pos + 8 + frames * align]
            return PlainWav(rate, frames, channels, samples, *WAV_SAMPLES[tag, bits])
        if size & 1 or not all(32 <= c < 127 for c in chunk_id):
            return None  # odd-sized or garbled chunks: libsndfile has its own rules for them
        pos += 8 + size
    return None


def wav_blocks(wav: PlainWav, mono: bool):
    """Yield ``wav``'s samples as float32 ``(channels, n)`` blocks of up to ``READ_FRAMES`` frames, converted as
    libsndfile converts them: integers times 2^-(bits-1) (24 bits as the top of an int32), unsigned 8-bit less 128."""
    width = len(wav.samples) // (wav.frames * wav.channels)
    step = READ_FRAMES * wav.channels * width
    for start in range(0, len(wav.samples), step):
        chunk = wav.samples[start:start + step]
        if wav.dtype == "i3":
            wide = np.zeros((len(chunk) // 3, 4), np.uint8)
            wide[:, 1:] = np.frombuffer(chunk, np.uint8).reshape(-1, 3)
            x = wide.view("<i4").ravel().astype(np.float32)
        else:
            with np.errstate(over="ignore"):  # a double past float32's range: Inf, which _checked refuses
                x = np.frombuffer(chunk, wav.dtype).astype(np.float32)
        if wav.offset:
            x += np.float32(wav.offset)
        if wav.scale != 1.0:
            x *= np.float32(wav.scale)
        yield to_layout(x.reshape(-1, wav.channels).T, mono)
