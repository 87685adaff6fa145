"""Audio file decoding, resampling and streaming; numpy only (torch is imported lazily by ``load_audio``).

Arrays are float32 ``(channels, samples)``; sample rates in Hz. libsndfile (``soundfile``) decodes
WAV/FLAC/OGG/MP3/AIFF/...; anything it cannot open goes to FFmpeg through PyAV when installed.
Every problem with a file is raised as :class:`AudioDecodeError`; resampling uses soxr ('HQ').
Every function that takes a ``path`` also takes the encoded file's bytes (e.g. an HTTP upload held in memory);
a plain PCM or float WAV held in memory is read in place by numpy (:func:`_plain_wav`), to the values libsndfile gives.
"""
from __future__ import annotations

import importlib.util
import io
import os
import stat
import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

SUPPORTED_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au",
    ".snd", ".caf", ".w64", ".rf64", ".m4a", ".mp4", ".aac", ".webm", ".mkv", ".mka", ".wma",
    ".wv", ".ac3", ".amr", ".3gp",
})

_QUALITY = "HQ"
_READ_FRAMES = 1 << 16  # frames per libsndfile read
# Bytes per sample of the libsndfile subtypes whose frame count follows from the data chunk size.
_PCM_WIDTH = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
              "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1}
_SIZE_PLACEHOLDERS = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # data sizes written by streaming encoders


class AudioDecodeError(Exception):
    """A file could not be decoded; ``str(err) == f"{path}: {reason}"`` (``<N bytes>`` for audio in memory)."""

    def __init__(self, path, reason):
        super().__init__(path, reason)  # args kept so the error pickles across worker processes
        if _in_memory(path):
            path = f"<{len(path)} bytes>"
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self.reason = reason

    def __str__(self):
        return f"{self.path}: {self.reason}"


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the caller's limit (:func:`read_mono_limited`)."""


class NeedsFFmpeg(AudioDecodeError):
    """libsndfile cannot read the file and the caller asked not to fall back to PyAV here (``ffmpeg=False``)."""


class AudioInfo(NamedTuple):
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel
    duration: float  # seconds


def read_audio(path, sample_rate: int | None = None, mono: bool = True, *, ffmpeg: bool = True) -> np.ndarray:
    """Decode a whole file to float32 ``(channels, samples)`` (``(1, samples)`` channel mean if
    ``mono``), resampled to ``sample_rate`` Hz when given; PCM values lie in [-1, 1]. ``ffmpeg=False``: raise
    :class:`NeedsFFmpeg` where libsndfile cannot read the file, instead of decoding it with PyAV here."""
    _check_rate(sample_rate)
    rate, _, blocks = _decode(path, mono, ffmpeg)
    audio = np.concatenate(list(blocks), axis=1)
    if not sample_rate or sample_rate == rate:
        return audio
    out = _finite(path, resample(audio, rate, sample_rate))
    if out.shape[1] == 0:
        raise _too_short(path, audio.shape[1], rate, sample_rate)
    return out


def _too_short(path, samples: int, rate: int, sample_rate: int) -> "AudioDecodeError":
    return AudioDecodeError(path, f"{samples} samples at {rate} Hz resample to none at {sample_rate} Hz")


def _finite(path, audio: np.ndarray) -> np.ndarray:
    """Resampling huge (finite) float samples can overflow; report it instead of returning Inf/NaN."""
    if not np.isfinite(audio).all():
        raise AudioDecodeError(path, "sample values too large: resampling overflows to Inf/NaN")
    return audio


def read_mono_limited(path, sample_rate: int, max_seconds: float | None, *, ffmpeg: bool = True) -> np.ndarray:
    """Mono float32 ``(samples,)`` at ``sample_rate`` Hz, refusing audio longer than ``max_seconds`` (None: no
    limit) with :class:`AudioTooLong`: from the header when it declares a length, before decoding anything (the
    file is opened once), and in any case while streaming, so an over-long file is never decoded whole (whatever
    its header says). ``ffmpeg``: as :func:`read_audio`."""
    _check_rate(sample_rate)
    rate, frames, native = _decode(path, True, ffmpeg)
    if max_seconds is not None and frames and frames / rate > max_seconds + 1e-6:
        native.close()  # and drops the open file
        raise AudioTooLong(path, f"audio of {frames / rate:.1f} s exceeds the limit of {max_seconds:g} s")
    limit = float("inf") if max_seconds is None else int(max_seconds * sample_rate)
    blocks, total = [], 0
    for block in _at_rate(path, rate, native, sample_rate, max(1, sample_rate * 10)):
        blocks.append(block[0])
        total += block.shape[1]
        if total > limit:
            raise AudioTooLong(path, f"audio exceeds the limit of {max_seconds:g} s")
    return np.concatenate(blocks)


def load_audio(path, sample_rate: int | None = None, mono: bool = True):
    """:func:`read_audio` as a float32 ``torch.Tensor`` ``(channels, samples)``."""
    import torch

    return torch.from_numpy(read_audio(path, sample_rate, mono))


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(channels, samples)`` or ``(samples,)`` audio with soxr; float32 out."""
    _check_rate(orig_sr)
    _check_rate(target_sr)
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    if audio.ndim == 1:
        return soxr.resample(audio, orig_sr, target_sr, quality=_QUALITY)
    out = soxr.resample(np.ascontiguousarray(audio.T), orig_sr, target_sr, quality=_QUALITY)
    return np.ascontiguousarray(out.T)


def audio_info(path) -> AudioInfo:
    """Sample rate, channels and frames from the header (libsndfile), else from PyAV's probe.
    MP3 frame counts without a Xing/LAME header are estimates."""
    _check_path(path)
    try:
        info = sf.info(_sf_source(path))
        rate, channels, frames = info.samplerate, info.channels, info.frames
    except Exception as sf_error:
        av = _import_av(path, sf_error)
        try:
            with av.open(_source(path)) as container:
                stream = _audio_stream(path, container)
                rate, channels, frames = stream.rate, stream.channels, _av_frames(container, stream)
        except AudioDecodeError:
            raise
        except Exception as e:
            raise AudioDecodeError(path, _unrecognised(sf_error, e)) from e
    if not rate or rate <= 0:
        raise AudioDecodeError(path, f"invalid sample rate {rate}")
    return AudioInfo(rate, channels, frames, frames / rate)


def iter_blocks(path, sample_rate: int | None, block_samples: int, mono: bool = True, *, ffmpeg: bool = True
                ) -> Iterator[np.ndarray]:
    """Stream a file as float32 ``(channels, block_samples)`` blocks at ``sample_rate`` Hz (native
    rate if None); the last block may be shorter. Memory stays flat for multi-hour files.
    The file is opened (and a missing/unreadable one reported) when this is called. ``ffmpeg``: as
    :func:`read_audio`."""
    _check_rate(sample_rate)
    if block_samples <= 0:
        raise ValueError(f"block_samples must be positive, got {block_samples}")
    rate, _, blocks = _decode(path, mono, ffmpeg)
    return _at_rate(path, rate, blocks, sample_rate, block_samples)


def _at_rate(path, rate: int, blocks, sample_rate: int | None, block_samples: int):
    """Native-rate blocks -> ``block_samples`` blocks at ``sample_rate`` Hz (native if None)."""
    if sample_rate and sample_rate != rate:
        blocks = _stream_resample(path, blocks, rate, sample_rate)
    return _reblock(blocks, block_samples)


def _stream_resample(path, blocks, orig_sr, target_sr):
    """Resampled, checked-finite blocks; AudioDecodeError when the input resamples to no samples at all."""
    streamer = channels = None
    read = written = 0
    for block in blocks:
        if streamer is None:
            channels = block.shape[0]
            streamer = soxr.ResampleStream(orig_sr, target_sr, channels, dtype="float32",
                                           quality=_QUALITY)
        read += block.shape[1]
        out = _finite(path, streamer.resample_chunk(np.ascontiguousarray(block.T)).T)
        written += out.shape[1]
        yield out
    if streamer is not None:
        out = _finite(path, streamer.resample_chunk(np.zeros((0, channels), np.float32), last=True).T)
        written += out.shape[1]
        if written == 0:
            raise _too_short(path, read, orig_sr, target_sr)
        yield out


def _reblock(blocks, block_samples):
    pending: list[np.ndarray] = []
    n_pending = 0
    for block in blocks:
        pending.append(block)
        n_pending += block.shape[1]
        if n_pending < block_samples:
            continue
        buf = np.concatenate(pending, axis=1)
        n_full = n_pending - n_pending % block_samples
        for start in range(0, n_full, block_samples):
            yield np.ascontiguousarray(buf[:, start:start + block_samples])
        pending, n_pending = [buf[:, n_full:]], n_pending - n_full
    if n_pending:
        yield np.ascontiguousarray(np.concatenate(pending, axis=1))


# --------------------------------------------------------------------------- decoding internals
# ``path`` below is a file path or the encoded file's bytes (``bytes``/``bytearray``/``memoryview``): every
# function that takes a path also decodes audio held in memory, e.g. an HTTP upload.

def _in_memory(path) -> bool:
    return isinstance(path, (bytes, bytearray, memoryview))


def _source(path):
    """What libsndfile and PyAV open: a fresh file-like object over bytes, else the path as a string."""
    return io.BytesIO(path) if _in_memory(path) else str(path)


def _sf_source(path):
    """What libsndfile opens: :func:`_source`, except that a file name the file-system encoding cannot encode (a
    Latin-1 name on a UTF-8 system, which Python holds with surrogates) goes as its raw bytes, which libsndfile
    opens as they are; soundfile would fail to encode it."""
    src = _source(path)
    if isinstance(src, str) and os.name == "posix":
        try:
            src.encode(sys.getfilesystemencoding())
        except UnicodeEncodeError:
            return os.fsencode(src)
    return src


def _check_rate(rate):
    if rate is not None and rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")


def _check_path(path):
    """Raise AudioDecodeError unless ``path`` is a readable, non-empty regular file (or non-empty bytes)."""
    if _in_memory(path):
        if len(path) == 0:
            raise AudioDecodeError(path, "empty file (0 bytes)")
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioDecodeError(path, "file does not exist") from None
    except PermissionError:
        raise AudioDecodeError(path, "permission denied") from None
    except (OSError, TypeError, ValueError) as e:
        raise AudioDecodeError(path, f"cannot access file ({e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioDecodeError(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise AudioDecodeError(path, "not a regular file")
    if st.st_size == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError(path, "permission denied")


def _brief(e: BaseException) -> str:
    msg = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
    msg = str(msg).strip() or type(e).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


def _unrecognised(sf_error, av_error=None) -> str:
    sf_msg = _brief(sf_error)
    if "does not exist" in sf_msg:  # libsndfile's MP3 probe says so of any unknown data
        sf_msg = "format not recognised"
    detail = f"libsndfile: {sf_msg}"
    if av_error is not None:
        detail += f"; ffmpeg: {_brief(av_error)}"
    return f"not a recognised audio format ({detail})"


def _import_av(path, sf_error):
    try:
        import av
    except ImportError:
        raise AudioDecodeError(path, _unrecognised(sf_error) + "; other formats need PyAV (the 'formats' extra: "
                               "pip install 'audioclf[formats]'), which is not installed") from None
    return av


def _audio_stream(path, container):
    if not container.streams.audio:
        raise AudioDecodeError(path, "no audio stream")
    return container.streams.audio[0]


def _decode(path, mono, ffmpeg: bool = True) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open ``path``; return (native rate, frames the header declares (0: unknown), iterator of float32
    (channels, n) blocks). The iterator raises AudioDecodeError for corrupt/truncated data, NaN/Inf samples or an
    empty stream; closing it closes the file."""
    _check_path(path)
    plain = _plain_wav(path) if _in_memory(path) else None
    if plain is not None:  # the common upload: no libsndfile open, samples read in place
        return plain.rate, plain.frames, _checked(path, _wav_blocks(plain, mono))
    opened = None
    try:
        opened = sf.SoundFile(_sf_source(path))  # opened once: the header is parsed once
        sf_error = None if opened.frames > 0 else "no frames"
    except Exception as e:
        sf_error = e
    if sf_error is not None and opened is not None:
        opened.close()
    if sf_error is None:
        blocks = _sf_blocks(path, opened, mono)
    elif isinstance(sf_error, str) and importlib.util.find_spec("av") is None:
        # an empty recording, or one cut short (an Ogg missing its last page has no frame count): only FFmpeg tells
        raise AudioDecodeError(path, "contains no audio samples that libsndfile can read: empty, or truncated or "
                                     "corrupt data (PyAV, pip install av, reads more; it is not installed)")
    elif not ffmpeg:
        why = sf_error if isinstance(sf_error, str) else _brief(sf_error)
        raise NeedsFFmpeg(path, f"libsndfile cannot read it ({why})")
    else:  # unknown to libsndfile, or no frames there (e.g. an Ogg missing its last page)
        blocks = _av_blocks(path, mono, sf_error)
    try:
        rate, frames = next(blocks)
    except AudioDecodeError:
        raise
    except Exception as e:
        raise AudioDecodeError(path, f"cannot open ({_brief(e)})") from e
    if not rate or rate <= 0:
        raise AudioDecodeError(path, f"invalid sample rate {rate}")
    return rate, frames, _checked(path, blocks)


def _checked(path, blocks):
    total = 0
    try:
        for block in blocks:
            if not np.isfinite(block).all():
                raise AudioDecodeError(path, "contains NaN/Inf samples")
            total += block.shape[1]
            yield block
    except AudioDecodeError:
        raise
    except Exception as e:
        raise AudioDecodeError(path, f"truncated or corrupt data ({_brief(e)})") from e
    if total == 0:
        raise AudioDecodeError(path, "contains no audio samples")


def _to_layout(block: np.ndarray, mono: bool) -> np.ndarray:
    """(channels, n) float32 block -> channel mean (1, n) if mono. NaN/Inf samples pass through quietly: the caller
    (``_checked``) refuses the file for them."""
    if mono and block.shape[0] > 1:
        with np.errstate(invalid="ignore", over="ignore"):
            return block.mean(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)


def _sf_blocks(path, f: sf.SoundFile, mono):
    """From the open ``f`` (closed at the end): yield (rate, frames declared), then blocks; raise if fewer frames
    than the header announces."""
    with f:
        yield f.samplerate, f.frames
        expected = _declared_frames(path, f.subtype, f.channels)
        if expected is None:  # libsndfile's MP3 frame count is only an estimate without Xing
            expected = 0 if f.format == "MP3" else f.frames
        read = 0
        while True:  # not f.blocks(): it yields uninitialised memory past a short read
            block = f.read(_READ_FRAMES, dtype="float32", always_2d=True)
            if len(block):
                read += len(block)
                yield _to_layout(block.T, mono)
            if len(block) < _READ_FRAMES:  # the end (a short clip: no second, empty read)
                break
    if read < expected:
        raise AudioDecodeError(path, f"truncated: header says {expected} frames, "
                                     f"only {read} readable")


_WAVE_SUBFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # of the PCM and IEEE-float GUIDs
_WAV_SAMPLES = {(1, 8): ("u1", -128.0, 2.0 ** -7), (1, 16): ("<i2", 0.0, 2.0 ** -15), (1, 24): ("i3", 0.0, 2.0 ** -31),
                (1, 32): ("<i4", 0.0, 2.0 ** -31), (3, 32): ("<f4", 0.0, 1.0), (3, 64): ("<f8", 0.0, 1.0)}


class _PlainWav(NamedTuple):
    rate: int  # Hz
    frames: int
    channels: int
    samples: memoryview  # the data chunk's ``frames * channels`` samples, interleaved
    dtype: str  # numpy's, or "i3": packed 24-bit
    offset: float  # float32 value = (sample + offset) * scale, as libsndfile converts
    scale: float


def _plain_wav(data) -> _PlainWav | None:
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
        if valid != bits or view[46:60] != _WAVE_SUBFORMAT_TAIL:
            return None
    if ((tag, bits) not in _WAV_SAMPLES or not 0 < channels <= 1024 or not 0 < rate < 2 ** 31  # libsndfile's limits
            or align != channels * bits // 8):
        return None
    pos = 20 + fmt_size
    while pos + 8 <= len(view):  # past other chunks (fact, LIST, PEAK, ...) to the data chunk
        chunk_id, size = view[pos:pos + 4], struct.unpack_from("<I", view, pos + 4)[0]
        if chunk_id == b"data":
            frames = size // align
            if frames == 0 or size in _SIZE_PLACEHOLDERS or pos + 8 + size > len(view):
                return None  # no frames, streamed or truncated: libsndfile's checks read or report it
            samples = view[pos + 8:pos + 8 + frames * align]
            return _PlainWav(rate, frames, channels, samples, *_WAV_SAMPLES[tag, bits])
        if size & 1 or not all(32 <= c < 127 for c in chunk_id):
            return None  # odd-sized or garbled chunks: libsndfile has its own rules for them
        pos += 8 + size
    return None


def _wav_blocks(wav: _PlainWav, mono: bool):
    """Yield ``wav``'s samples as float32 ``(channels, n)`` blocks of up to ``_READ_FRAMES`` frames, converted as
    libsndfile converts them: integers times 2^-(bits-1) (24 bits as the top of an int32), unsigned 8-bit less 128."""
    width = len(wav.samples) // (wav.frames * wav.channels)
    step = _READ_FRAMES * wav.channels * width
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
        yield _to_layout(x.reshape(-1, wav.channels).T, mono)


def _av_blocks(path, mono, sf_error):
    """PyAV fallback: yield (rate, frames declared or 0), then blocks of the first audio stream at its native
    rate."""
    av = _import_av(path, sf_error)
    try:
        container = av.open(_source(path))
    except Exception as e:
        if isinstance(sf_error, str):  # libsndfile knew the format but found no frames
            raise AudioDecodeError(path, f"truncated or corrupt data (libsndfile found no frames; "
                                         f"ffmpeg: {_brief(e)})") from e
        raise AudioDecodeError(path, _unrecognised(sf_error, e)) from e
    with container:
        stream = _audio_stream(path, container)
        yield stream.rate, _av_frames(container, stream)
        to_float = av.AudioResampler(format="flt")  # interleaved float32; keeps the native rate and layout
        for frame in container.decode(stream):
            for out in to_float.resample(frame):
                yield _to_layout(_interleaved(path, out), mono)
        for out in to_float.resample(None):
            yield _to_layout(_interleaved(path, out), mono)


def _av_frames(container, stream) -> int:
    """Frames from the stream's duration, else the container's; 0 when neither declares one."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / 1_000_000  # av.time_base
    return round(seconds * (stream.rate or 0))


def _interleaved(path, frame) -> np.ndarray:
    """``(channels, samples)`` float32 copy of an interleaved ``flt`` frame, read from its one plane. Not PyAV's
    ``to_ndarray``: on a corrupt WAV it listed 18 planes for a 10-channel frame and segfaulted reading them."""
    channels, samples = frame.layout.nb_channels, frame.samples
    plane = frame.planes[0]
    if channels <= 0 or plane.buffer_size < channels * samples * 4:
        raise AudioDecodeError(path, f"corrupt audio frame ({samples} samples x {channels} channels in "
                                     f"{plane.buffer_size} bytes)")
    return np.frombuffer(plane, np.float32, count=channels * samples).reshape(samples, channels).T.copy()


def _declared_frames(path, subtype, channels) -> int | None:
    """Frames announced by a PCM WAV/AIFF data chunk (libsndfile silently clamps it to the file
    size, so a truncated file otherwise looks complete); None when unknown."""
    width = _PCM_WIDTH.get(subtype)
    if width is None or channels <= 0:
        return None
    with (io.BytesIO(path) if _in_memory(path) else open(path, "rb")) as fh:
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
                if size in _SIZE_PLACEHOLDERS:
                    return None
                if target == b"SSND":
                    size -= 8 + struct.unpack(">I", fh.read(4).ljust(4, b"\0"))[0]  # offset field
                return max(size, 0) // (width * channels)
            pos += 8 + size + (size & 1)
            fh.seek(pos)
    return None
