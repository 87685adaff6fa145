"""From logits to answers, shared by every back end (PyTorch and ONNX). numpy only: never imports torch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import read_audio
from .spec import RunSpec


def scores_from_logits(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax for single-label runs, sigmoid for multi-label ones. ``(n, classes)``."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


DEFAULT_TOP_K = 5  # labels per answer in Python, on the command line and over HTTP
MAX_CHANNELS = 8  # a 2-D array with one side this small or smaller is (channels, samples) or (samples, channels)


def _mono(array: np.ndarray, where: str) -> np.ndarray:
    """Float32 mono ``(samples,)`` from ``(samples,)``, ``(channels, samples)`` or ``(samples, channels)`` (as
    ``soundfile.read`` gives it); int16/int32 PCM scaled to [-1, 1]."""
    if array.dtype.kind in "iu":
        if array.dtype not in (np.int16, np.int32):
            raise ValueError(f"{where}: {array.dtype} samples: pass float audio in [-1, 1] (or int16/int32 PCM)")
        array = array / float(np.iinfo(array.dtype).max + 1)
    elif array.dtype.kind != "f":
        raise ValueError(f"{where}: {array.dtype} is not audio: pass float samples in [-1, 1]")
    if array.ndim == 2:
        rows, cols = array.shape
        if rows <= MAX_CHANNELS < cols:
            array = array.mean(axis=0)
        elif cols <= MAX_CHANNELS < rows:
            array = array.mean(axis=1)
        else:
            raise ValueError(f"{where}: ambiguous shape {array.shape}: pass (samples,) or (channels, samples) with "
                             f"at most {MAX_CHANNELS} channels")
    elif array.ndim != 1:
        raise ValueError(f"{where}: shape {array.shape}: pass (samples,) or (channels, samples)")
    if array.size == 0:
        raise ValueError(f"{where}: no samples")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: the samples hold NaN or Inf")
    return np.ascontiguousarray(array, dtype=np.float32)


def as_clip(audio, sample_rate: int, sampling_rate: int | None = None, where: str = "audio") -> np.ndarray:
    """One input as a mono float32 clip ``(samples,)`` at ``sample_rate`` Hz (the model's). ``audio``: a file path,
    encoded bytes (any format :func:`read_audio` decodes), a dict ``{"raw" or "array": samples, "sampling_rate":
    Hz}``, or samples (numpy array or torch tensor, ``(samples,)`` or ``(channels, samples)``) at ``sampling_rate``
    Hz, which samples need: they are resampled from it, never assumed to be at the model's rate."""
    from .audio import resample
    if isinstance(audio, (str, Path, bytes, bytearray, memoryview)):
        return read_audio(bytes(audio) if isinstance(audio, memoryview) else audio, sample_rate)[0]
    if isinstance(audio, dict):
        key = "raw" if "raw" in audio else "array"
        if key not in audio or "sampling_rate" not in audio:
            raise ValueError(f"{where}: a dict needs 'raw' (or 'array') and 'sampling_rate', got keys {sorted(audio)}")
        return as_clip(audio[key], sample_rate, audio["sampling_rate"], where)
    if hasattr(audio, "detach") and hasattr(audio, "numpy"):  # a torch tensor, without importing torch here
        audio = audio.detach().cpu().float().numpy()
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"{where}: {type(audio).__name__} is not audio: pass a path, bytes, an array or tensor "
                         "with sampling_rate=, or a dict {'raw', 'sampling_rate'}")
    clip = _mono(audio, where)
    if sampling_rate is None:
        raise ValueError(f"{where}: samples need sampling_rate= (their rate in Hz; this model takes {sample_rate} Hz "
                         "and resamples to it)")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"{where}: sampling_rate must be a positive whole number of Hz, got {sampling_rate!r}")
    return clip if sampling_rate == sample_rate else resample(clip, int(sampling_rate), sample_rate)


def is_batch(audio) -> bool:
    """A list or tuple of inputs (a single input is a path, bytes, a dict, an array or a tensor)."""
    return isinstance(audio, (list, tuple))


class Predictor:
    """Answers for clips, whatever runs the model (PyTorch, ONNX Runtime). A subclass calls :meth:`use_spec` and
    implements ``logits(batch)`` (windows ``(n, samples)`` at ``sample_rate`` -> ``(n, classes)``) and
    ``clip_logits(clips)`` (whole clips, window-averaged). Long recordings (:func:`audioclf.longform.scan`) also use
    ``frame_hop``, ``window_batch`` and, where a back end can score slices of one block's spectrogram,
    ``spectrogram_frontend`` and ``window_logits(batch, spectrogram=True)``."""

    labels: list[str]
    sample_rate: int
    clip_seconds: float | None
    clip_samples: int | None
    multilabel: bool
    thresholds: np.ndarray
    frame_hop: int = 1  # samples between the front end's frames
    spectrogram_frontend = None  # a front end whose frames ``window_logits(..., spectrogram=True)`` takes, or None

    def use_spec(self, spec: RunSpec) -> None:
        """Take the labels, rate, window, task and thresholds of ``spec``."""
        self.spec = spec
        self.labels, self.sample_rate, self.clip_seconds = list(spec.labels), spec.sample_rate, spec.clip_seconds
        self.clip_samples, self.multilabel = spec.clip_samples, spec.multilabel
        self.thresholds = np.asarray(spec.thresholds or [0.5] * len(spec.labels), dtype=np.float64)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def clip_logits(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def window_logits(self, batch: np.ndarray, spectrogram: bool = False) -> np.ndarray:
        """Logits of a batch of windows: waveforms, or (``spectrogram``) slices of ``spectrogram_frontend``'s
        frames."""
        if spectrogram:
            raise ValueError(f"{type(self).__name__} scores waveforms only")
        return self.logits(batch)

    def window_batch(self, samples: int) -> int:
        """Windows of ``samples`` per forward pass."""
        return 32

    def clips(self, audio, sampling_rate: int | None = None) -> list[np.ndarray]:
        """Inputs (one, or a list or tuple of them; see :func:`as_clip`) as mono clips at the model's rate."""
        items = list(audio) if is_batch(audio) else [audio]
        return [as_clip(a, self.sample_rate, sampling_rate, f"input {i}" if is_batch(audio) else "audio")
                for i, a in enumerate(items)]

    def scores(self, audio, sampling_rate: int | None = None) -> np.ndarray:
        """Probabilities ``(inputs, classes)`` for one input or a list of them (:func:`as_clip`: paths, bytes,
        dicts, or samples at ``sampling_rate`` Hz)."""
        return scores_from_logits(self.clip_logits(self.clips(audio, sampling_rate)), self.multilabel)

    def predict(self, audio, top_k: int = DEFAULT_TOP_K, sampling_rate: int | None = None) -> list:
        """``[{"label", "score"}]`` best first (:meth:`ranked`) for one input, or a list of those for a list of
        inputs (batched). An input is a file path, encoded bytes, a dict ``{"raw", "sampling_rate"}``, or a numpy
        array or torch tensor ``(samples,)`` / ``(channels, samples)`` with ``sampling_rate=`` its rate in Hz
        (resampled to ``self.sample_rate``; samples without it are refused, never assumed to be at the model's
        rate). Shapes that do not say which axis is time are refused."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        results = [self.ranked(row, top_k) for row in self.scores(audio, sampling_rate)]
        return results if is_batch(audio) else results[0]

    def ranked(self, row: np.ndarray, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """One clip's scores ``(classes,)`` -> ``[{"label", "score"}]``, best first: the ``top_k`` best, and for a
        multi-label run also every further label at or above its threshold."""
        order = np.argsort(-row, kind="stable")  # ties keep label order
        if self.multilabel:
            order = [i for rank, i in enumerate(order) if rank < top_k or row[i] >= self.thresholds[i]]
        else:
            order = order[:top_k]
        return [{"label": self.labels[i], "score": float(row[i])} for i in order]
