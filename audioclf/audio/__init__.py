"""Audio file decoding, resampling and streaming; numpy only (torch is imported lazily by ``load_audio``).

Arrays are float32 ``(channels, samples)``; sample rates in Hz. libsndfile (``soundfile``) decodes
WAV/FLAC/OGG/MP3/AIFF/...; anything it cannot open goes to FFmpeg through PyAV when installed.
Every problem with a file is raised as :class:`AudioDecodeError`; resampling uses soxr ('HQ').
Every function that takes a ``path`` also takes the encoded file's bytes (e.g. an HTTP upload held in memory);
a plain PCM or float WAV held in memory is read in place by numpy (:mod:`.wav`), to the values libsndfile gives.
Back ends: :mod:`.sndfile`, :mod:`.pyav`, :mod:`.wav`; what they share: :mod:`.common`.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from .common import (SUPPORTED_EXTENSIONS, AudioDecodeError, AudioInfo, AudioTooLong, NeedsFFmpeg, brief, check_path,
                     check_rate, in_memory, source, unrecognised)
from .pyav import audio_stream, av_blocks, av_frames, import_av
from .sndfile import sf_blocks, sf_source
from .wav import plain_wav, wav_blocks

__all__ = ["SUPPORTED_EXTENSIONS", "AudioDecodeError", "AudioInfo", "AudioTooLong", "NeedsFFmpeg", "audio_info",
           "iter_blocks", "load_audio", "read_audio", "read_mono_limited", "resample"]

_QUALITY = "HQ"


def read_audio(path, sample_rate: int | None = None, mono: bool = True, *, ffmpeg: bool = True) -> np.ndarray:
    """Decode a whole file to float32 ``(channels, samples)`` (``(1, samples)`` channel mean if
    ``mono``), resampled to ``sample_rate`` Hz when given; PCM values lie in [-1, 1]. ``ffmpeg=False``: raise
    :class:`NeedsFFmpeg` where libsndfile cannot read the file, instead of decoding it with PyAV here."""
    check_rate(sample_rate)
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
    check_rate(sample_rate)
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
    check_rate(orig_sr)
    check_rate(target_sr)
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
    check_path(path)
    try:
        info = sf.info(sf_source(path))
        rate, channels, frames = info.samplerate, info.channels, info.frames
    except Exception as sf_error:
        av = import_av(path, sf_error)
        try:
            with av.open(source(path)) as container:
                stream = audio_stream(path, container)
                rate, channels, frames = stream.rate, stream.channels, av_frames(container, stream)
        except AudioDecodeError:
            raise
        except Exception as e:
            raise AudioDecodeError(path, unrecognised(sf_error, e)) from e
    if not rate or rate <= 0:
        raise AudioDecodeError(path, f"invalid sample rate {rate}")
    return AudioInfo(rate, channels, frames, frames / rate)


def iter_blocks(path, sample_rate: int | None, block_samples: int, mono: bool = True, *, ffmpeg: bool = True
                ) -> Iterator[np.ndarray]:
    """Stream a file as float32 ``(channels, block_samples)`` blocks at ``sample_rate`` Hz (native
    rate if None); the last block may be shorter. Memory stays flat for multi-hour files.
    The file is opened (and a missing/unreadable one reported) when this is called. ``ffmpeg``: as
    :func:`read_audio`."""
    check_rate(sample_rate)
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


def _decode(path, mono, ffmpeg: bool = True) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open ``path``; return (native rate, frames the header declares (0: unknown), iterator of float32
    (channels, n) blocks). The iterator raises AudioDecodeError for corrupt/truncated data, NaN/Inf samples or an
    empty stream; closing it closes the file."""
    check_path(path)
    plain = plain_wav(path) if in_memory(path) else None
    if plain is not None:  # the common upload: no libsndfile open, samples read in place
        return plain.rate, plain.frames, _checked(path, wav_blocks(plain, mono))
    opened = None
    try:
        opened = sf.SoundFile(sf_source(path))  # opened once: the header is parsed once
        sf_error = None if opened.frames > 0 else "no frames"
    except Exception as e:
        sf_error = e
    if sf_error is not None and opened is not None:
        opened.close()
    if sf_error is None:
        blocks = sf_blocks(path, opened, mono)
    elif isinstance(sf_error, str) and importlib.util.find_spec("av") is None:
        # an empty recording, or one cut short (an Ogg missing its last page has no frame count): only FFmpeg tells
        raise AudioDecodeError(path, "contains no audio samples that libsndfile can read: empty, or truncated or "
                                     "corrupt data (PyAV, pip install av, reads more; it is not installed)")
    elif not ffmpeg:
        why = sf_error if isinstance(sf_error, str) else brief(sf_error)
        raise NeedsFFmpeg(path, f"libsndfile cannot read it ({why})")
    else:  # unknown to libsndfile, or no frames there (e.g. an Ogg missing its last page)
        blocks = av_blocks(path, mono, sf_error)
    try:
        rate, frames = next(blocks)
    except AudioDecodeError:
        raise
    except Exception as e:
        raise AudioDecodeError(path, f"cannot open ({brief(e)})") from e
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
        raise AudioDecodeError(path, f"truncated or corrupt data ({brief(e)})") from e
    if total == 0:
        raise AudioDecodeError(path, "contains no audio samples")
