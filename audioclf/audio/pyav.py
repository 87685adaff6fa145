"""The FFmpeg back end through PyAV (the ``formats`` extra): MP4/AAC, WebM/Opus and whatever libsndfile cannot
open."""
from __future__ import annotations

import numpy as np

from .common import AudioDecodeError, brief, source, to_layout, unrecognised


def import_av(path, sf_error):
    try:
        import av
    except ImportError:
        raise AudioDecodeError(path, unrecognised(sf_error) + "; other formats need PyAV (the 'formats' extra: "
                               "pip install 'audioclf[formats]'), which is not installed") from None
    return av


def audio_stream(path, container):
    if not container.streams.audio:
        raise AudioDecodeError(path, "no audio stream")
    return container.streams.audio[0]


def av_blocks(path, mono, sf_error):
    """PyAV fallback: yield (rate, frames declared or 0), then blocks of the first audio stream at its native
    rate."""
    av = import_av(path, sf_error)
    try:
        container = av.open(source(path))
    except Exception as e:
        if isinstance(sf_error, str):  # libsndfile knew the format but found no frames
            raise AudioDecodeError(path, f"truncated or corrupt data (libsndfile found no frames; "
                                         f"ffmpeg: {brief(e)})") from e
        raise AudioDecodeError(path, unrecognised(sf_error, e)) from e
    with container:
        stream = audio_stream(path, container)
        yield stream.rate, av_frames(container, stream)
        to_float = av.AudioResampler(format="flt")  # interleaved float32; keeps the native rate and layout
        for frame in container.decode(stream):
            for out in to_float.resample(frame):
                yield to_layout(interleaved(path, out), mono)
        for out in to_float.resample(None):
            yield to_layout(interleaved(path, out), mono)


def av_frames(container, stream) -> int:
    """Frames from the stream's duration, else the container's; 0 when neither declares one."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / 1_000_000  # av.time_base
    return round(seconds * (stream.rate or 0))


def interleaved(path, frame) -> np.ndarray:
    """``(channels, samples)`` float32 copy of an interleaved ``flt`` frame, read from its one plane. Not PyAV's
    ``to_ndarray``: on a corrupt WAV it listed 18 planes for a 10-channel frame and segfaulted reading them."""
    channels, samples = frame.layout.nb_channels, frame.samples
    plane = frame.planes[0]
    if channels <= 0 or plane.buffer_size < channels * samples * 4:
        raise AudioDecodeError(path, f"corrupt audio frame ({samples} samples x {channels} channels in "
                                     f"{plane.buffer_size} bytes)")
    return np.frombuffer(plane, np.float32, count=channels * samples).reshape(samples, channels).T.copy()
