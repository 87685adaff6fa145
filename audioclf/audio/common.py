"""What every decoding back end shares: the errors, the input checks, where audio in memory is opened from, and
the channel layout of decoded blocks. ``path`` is a file path or the encoded file's bytes."""
from __future__ import annotations

import io
import os
import stat
from typing import NamedTuple

import numpy as np

SUPPORTED_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au",
    ".snd", ".caf", ".w64", ".rf64", ".m4a", ".mp4", ".aac", ".webm", ".mkv", ".mka", ".wma",
    ".wv", ".ac3", ".amr", ".3gp",
})

READ_FRAMES = 1 << 16  # frames per libsndfile read
SIZE_PLACEHOLDERS = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # data sizes written by streaming encoders


class AudioDecodeError(Exception):
    """A file could not be decoded; ``str(err) == f"{path}: {reason}"`` (``<N bytes>`` for audio in memory)."""

    def __init__(self, path, reason):
        super().__init__(path, reason)  # args kept so the error pickles across worker processes
        if in_memory(path):
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


def in_memory(path) -> bool:
    return isinstance(path, (bytes, bytearray, memoryview))


def source(path):
    """What libsndfile and PyAV open: a fresh file-like object over bytes, else the path as a string."""
    return io.BytesIO(path) if in_memory(path) else str(path)


def check_rate(rate):
    if rate is not None and rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")


def check_path(path):
    """Raise AudioDecodeError unless ``path`` is a readable, non-empty regular file (or non-empty bytes)."""
    if in_memory(path):
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


def brief(e: BaseException) -> str:
    msg = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
    msg = str(msg).strip() or type(e).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


def unrecognised(sf_error, av_error=None) -> str:
    sf_msg = brief(sf_error)
    if "does not exist" in sf_msg:  # libsndfile's MP3 probe says so of any unknown data
        sf_msg = "format not recognised"
    detail = f"libsndfile: {sf_msg}"
    if av_error is not None:
        detail += f"; ffmpeg: {brief(av_error)}"
    return f"not a recognised audio format ({detail})"


def to_layout(block: np.ndarray, mono: bool) -> np.ndarray:
    """(channels, n) float32 block -> channel mean (1, n) if mono. NaN/Inf samples pass through quietly: the caller
    (``_checked``) refuses the file for them."""
    if mono and block.shape[0] > 1:
        with np.errstate(invalid="ignore", over="ignore"):
            return block.mean(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)
