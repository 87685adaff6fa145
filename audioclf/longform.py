"""Long recordings: stream a file, score fixed windows, merge them into timed events.

``scan(classifier, path, window_s, hop_s)`` reads the file block by block with :func:`audioclf.audio.iter_blocks`
(memory stays flat for multi-hour files), keeps an overlap carry between blocks so windows straddle block edges,
batches the windows and returns ``(times, scores)``: ``times`` ``(windows, 2)`` start/end seconds, ``scores``
``(windows, classes)`` probabilities (softmax for single-label runs, sigmoid for multi-label ones).

Windows start every ``hop`` from 0; like :func:`audioclf.data.windows.windows`, one more window aligned to the
end of the file is added when the regular ones leave a tail uncovered, and a file shorter than one window gives
a single zero-padded, centred window.

Back ends:

* PyTorch (an ``audioclf.inference.Classifier``, a run folder, or a bare model): the front end runs **once per
  block** (``Frontend.spectrogram``: STFT frame -> log-mel, frame-local) and each window's slice of it is then
  normalised on its own (``Frontend.normalise``: level normalisation, batch norm) and classified
  (``AudioClassifier.forward_spectrogram``). Each block is computed with enough context that every frame equals
  the frame of one whole-file spectrogram, so the scores do not depend on ``block_s``. They differ slightly from running the model on each window's waveform: a window's own centred STFT
  reflect-pads its first and last ``n_fft // 2`` samples, while the slice holds the real neighbouring audio in
  those edge frames (``n_fft // 2 // hop_length + 1`` frames at each end: 2 + 2 of the 76 frames of a 0.75 s window
  at 8 kHz, 25 ms / 10 ms), so scores differ by a few hundredths at most. A window whose
  start is not a multiple of the STFT hop is snapped to the nearest frame (the returned times are the snapped
  ones; the default hop is a whole number of frames, so this only happens for an explicit ``hop_s`` and for the
  final end-aligned window). What it saves is the front end's share of the work (overlapping windows' STFT and
  mel computed once rather than window/hop times), small next to the backbone for the conv models.
  ``reuse_spectrogram=False`` runs each window's waveform instead (the
  same numbers as the ONNX back end and ``Classifier``).
* Memory: one block of audio and spectrogram plus one batch (:mod:`audioclf.malloc` keeps glibc's heap from
  fragmenting over hours).
* ONNX (an :class:`audioclf.onnx_predictor.OnnxClassifier` or a ``.onnx`` path): the window waveforms go through
  the graph as batches. This path (and ``events``) never imports torch.

``events(times, scores, labels)`` median-smooths each class's score track, then merges consecutive windows at or
above the threshold into ``{"label", "start", "end", "peak"}`` events.
"""
from __future__ import annotations

from array import array
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .audio import iter_blocks
from .data.windows import fit_length
from .onnx_predictor import OnnxClassifier, scores_from_logits
from .predictions import Predictor

__all__ = ["scan", "events", "median_smooth"]


def as_predictor(obj) -> Predictor:
    """``obj`` as a :class:`~audioclf.predictions.Predictor`: as given, loaded from a run folder or a ``.onnx`` path,
    or a bare :class:`~audioclf.models.base.AudioClassifier` wrapped (``Classifier.for_model``)."""
    if isinstance(obj, Predictor):
        return obj
    if isinstance(obj, (str, Path)):
        if Path(obj).suffix.lower() == ".onnx":
            return OnnxClassifier(obj)
        from .inference import load
        return load(obj)
    if hasattr(obj, "forward_spectrogram") and hasattr(obj, "frontend"):
        from .inference import Classifier
        return Classifier.for_model(obj)
    raise TypeError(f"scan needs a Classifier, an OnnxClassifier, an AudioClassifier, a run folder or a .onnx path, "
                    f"got {type(obj).__name__}")


def scan(model_or_predictor, path, window_s: float | None = None, hop_s: float | None = None,
         block_s: float = 60.0, batch_size: int | None = None, *, reuse_spectrogram: bool = True,
         multilabel: bool | None = None, read_blocks=iter_blocks) -> tuple[np.ndarray, np.ndarray]:
    """Score a long recording window by window; returns ``(times (n, 2) seconds, scores (n, classes))``.

    ``window_s`` defaults to the model's clip length, ``hop_s`` to half a window (rounded to whole STFT frames),
    ``block_s`` is the streaming block (memory ~ block, not file), ``batch_size`` the windows per forward pass
    (default: :func:`audioclf.inference.inference_batch_size` for torch, 32 for ONNX). ``multilabel`` overrides the
    run's task (a bare model defaults to softmax). ``read_blocks(path, sample_rate, block_samples)`` streams the file
    as mono ``(1, n)`` blocks (:func:`audioclf.audio.iter_blocks`; ``DecoderPool.blocks`` decodes the formats only
    FFmpeg reads in a worker process).
    """
    predictor = as_predictor(model_or_predictor)
    multilabel = predictor.multilabel if multilabel is None else bool(multilabel)
    sr = predictor.sample_rate
    if window_s is None:
        if predictor.clip_seconds is None:
            raise ValueError("window_s is required for a bare model (it has no run config)")
        window_s = predictor.clip_seconds
    if batch_size is None and window_s > 0:
        batch_size = predictor.window_batch(int(round(window_s * sr)))
    batch_size = 32 if batch_size is None else batch_size
    if window_s <= 0 or (hop_s is not None and hop_s <= 0) or block_s <= 0 or batch_size < 1:
        raise ValueError(f"window_s, hop_s, block_s and batch_size must be positive "
                         f"(got {window_s}, {hop_s}, {block_s}, {batch_size})")
    win = max(1, int(round(window_s * sr)))
    if hop_s is None:  # half a window, rounded to whole STFT frames (so spectrogram slices line up exactly)
        hop = max(1, int(round(win / 2 / predictor.frame_hop))) * predictor.frame_hop
    else:
        hop = max(1, int(round(hop_s * sr)))
    blocks = _with_last(b[0] for b in read_blocks(path, sr, max(1, int(round(block_s * sr)))))
    if predictor.spectrogram_frontend is not None and reuse_spectrogram:
        items = _spectrogram_windows(predictor.spectrogram_frontend, blocks, win, hop)
    else:
        items = _waveform_windows(blocks, win, hop)

    # Results go to two growing flat buffers, not an object per window or batch: small live objects left between
    # the large blocks that each forward pass frees keep glibc from reusing them.
    bounds, logits, batch, batch_kind = array("q"), array("f"), [], None

    def run(batch):  # one forward pass, its float32 logits appended to the flat buffer
        logits.frombytes(np.asarray(predictor.window_logits(np.stack(batch), batch_kind == "spec"),
                                    np.float32).tobytes())

    for start, end, kind, x in items:
        if batch and (kind != batch_kind or len(batch) == batch_size):
            run(batch)
            batch = []
        batch.append(x)
        batch_kind = kind
        bounds.extend((start, end))
    if batch:
        run(batch)
    n = len(bounds) // 2  # windows
    times = np.frombuffer(bounds, dtype=np.int64).reshape(n, 2) / sr
    logits = np.frombuffer(logits, dtype=np.float32).reshape(n, len(logits) // max(1, n))
    return times, scores_from_logits(logits, multilabel)


def _with_last(it) -> Iterator[tuple[bool, np.ndarray]]:
    """``(is_last, item)`` pairs (one item of look-ahead)."""
    it = iter(it)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield False, prev
        prev = item
    yield True, prev


def _waveform_windows(blocks, win: int, hop: int):
    """``(start, end, "wave", samples)`` for every window; exactly ``windows(whole_file, win, hop)``."""
    buf, buf_start, total, k = np.zeros(0, np.float32), 0, 0, 0
    for _, block in blocks:
        buf = np.concatenate([buf, block])
        total += len(block)
        while k * hop + win <= total:
            s = k * hop - buf_start
            yield k * hop, k * hop + win, "wave", buf[s:s + win].copy()
            k += 1
        keep = max(buf_start, min(k * hop, total - win))  # the next window, or the last ``win`` samples
        buf, buf_start = buf[keep - buf_start:], keep
    if k == 0:  # shorter than one window: one centred, zero-padded window
        yield 0, total, "wave", fit_length(buf, win)
    elif (k - 1) * hop + win < total:  # a tail left over: one window aligned to the end
        yield total - win, total, "wave", buf[len(buf) - win:].copy()


def _spectrogram_windows(frontend, blocks, win: int, hop: int):
    """``(start, end, "spec", frames (n_mels, F))``: the front end once per block, sliced into windows.

    Global frame g is centred on sample ``g * hl`` and needs samples ``[g*hl - n_fft/2, g*hl + n_fft/2)``; each
    block's frames are computed on a segment starting ``ctx`` (a multiple of hl, > n_fft/2) before the first new
    frame, and only frames whose support lies inside the samples read so far are kept (all of them at the end),
    so every frame equals that of one whole-file centred STFT.
    """
    import torch

    cfg = frontend.config
    hl, half = cfg.hop_length, cfg.n_fft // 2
    ctx = (half // hl + 1) * hl
    n_frames = frontend.frames(win)  # frames of one window's own spectrogram
    buf, buf_start, total = np.zeros(0, np.float32), 0, 0
    spec, spec_start = np.zeros((cfg.n_mels, 0), np.float32), 0
    k = 0
    frontend.eval()
    device = frontend.logmel.mel_fb.device
    for last, block in blocks:
        buf = np.concatenate([buf, block])
        total += len(block)
        g_next = spec_start + spec.shape[1]  # first frame not computed yet
        g_last = total // hl if last else (total - half) // hl
        a = max(0, g_next * hl - ctx)
        if g_last >= g_next and total - a > half:
            with torch.inference_mode():
                segment = torch.from_numpy(buf[a - buf_start:])[None].to(device)
                frames = frontend.spectrogram(segment)[0].float().cpu().numpy()
            j0 = g_next - a // hl
            spec = np.concatenate([spec, frames[:, j0:j0 + g_last - g_next + 1]], axis=1)
        g_done = spec_start + spec.shape[1]
        while k * hop + win <= total:
            f = int(round(k * hop / hl))
            if last:
                f = min(f, g_done - n_frames)
            if f + n_frames > g_done:
                break
            yield f * hl, f * hl + win, "spec", spec[:, f - spec_start:f - spec_start + n_frames].copy()
            k += 1
        keep = max(buf_start, min(max(0, g_done * hl - ctx), total - win))
        buf, buf_start = buf[keep - buf_start:], keep
        keep_f = max(spec_start, min(int(round(k * hop / hl)), g_done - n_frames))
        spec, spec_start = spec[:, keep_f - spec_start:], keep_f
    if k == 0:  # shorter than one window: its waveform, zero-padded and centred, as clip_logits does
        yield 0, total, "wave", fit_length(buf[max(0, total - win) - buf_start:], win)
    elif (k - 1) * hop + win < total:
        f = spec_start + spec.shape[1] - n_frames
        yield f * hl, f * hl + win, "spec", spec[:, f - spec_start:].copy()


def median_smooth(track: np.ndarray, kernel: int) -> np.ndarray:
    """Running median of a 1-D (or ``(n, classes)``, per column) track over an odd ``kernel``; edges repeat the
    first / last value. ``kernel`` 1 returns the track unchanged."""
    if not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"median filter size must be a positive odd integer, got {kernel!r}")
    track = np.asarray(track, dtype=np.float64)
    if kernel == 1 or len(track) == 0:
        return track.copy()
    r = kernel // 2
    pad = [(r, r)] + [(0, 0)] * (track.ndim - 1)
    padded = np.pad(track, pad, mode="edge")
    stacked = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=0)
    return np.median(stacked, axis=-1)


def _segments(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each window's share of the time line: from halfway between its centre and the previous one to halfway to
    the next; the first starts at its window's start, the last ends at its window's end."""
    centres = times.mean(axis=1)
    mid = (centres[:-1] + centres[1:]) / 2
    starts = np.concatenate([[times[0, 0]], mid])
    ends = np.concatenate([mid, [times[-1, 1]]])
    return starts, ends


def events(times, scores, labels: Sequence[str], threshold=0.5, min_duration: float = 0.0,
           median_filter: int = 1) -> list[dict]:
    """Merge consecutive windows whose (median-smoothed) score is at or above ``threshold`` into events.

    ``times``: ``(n, 2)`` window start/end seconds (as from :func:`scan`) or ``(n,)`` window starts;
    ``scores``: ``(n, classes)``; ``threshold``: one number or one per class; ``median_filter``: odd kernel, in
    windows, applied to each class's track before thresholding. An event runs from the start of its first window's
    share of the time line to the end of its last one's (with overlapping windows a window's share is the hop
    around its centre, so events are not inflated by the overlap); ``peak`` is the highest unsmoothed score in it.
    Events shorter than ``min_duration`` seconds are dropped. Sorted by start, then label order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be (windows, {len(labels)}), got shape {scores.shape}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim == 1:  # window starts: each lasts until the next starts (the last one as long as the one before)
        step = np.diff(times)
        last = step[-1] if len(step) else 0.0
        times = np.stack([times, np.concatenate([times[1:], times[-1:] + last])], axis=1)
    if times.shape != (len(scores), 2):
        raise ValueError(f"times must be (windows, 2) or (windows,), matching {len(scores)} windows; "
                         f"got shape {times.shape}")
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(labels),))
    if len(scores) == 0:
        return []
    smoothed = median_smooth(scores, median_filter)
    seg_start, seg_end = _segments(times)
    out = []
    for c, label in enumerate(labels):
        active = np.concatenate([[False], smoothed[:, c] >= thresholds[c], [False]])
        edges = np.flatnonzero(np.diff(active.astype(np.int8)))
        for first, stop in zip(edges[::2], edges[1::2]):  # windows first .. stop - 1
            start, end = float(seg_start[first]), float(seg_end[stop - 1])
            if end - start + 1e-9 < min_duration:
                continue
            out.append({"label": label, "start": start, "end": end,
                        "peak": float(scores[first:stop, c].max())})
    order = {label: i for i, label in enumerate(labels)}
    out.sort(key=lambda e: (e["start"], order[e["label"]]))
    return out
