"""Torch-free inference on an exported ``model.onnx``: onnxruntime + numpy + :mod:`audioclf.audio` only.

``OnnxClassifier(path)`` mirrors :class:`audioclf.inference.Classifier` (``labels``, ``sample_rate``, ``scores``,
``predict``) with the same whole-clip window averaging, so a deployment needs neither torch nor the run folder.
This module must never import torch, directly or through another module (``tests/test_export.py`` checks it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .predictions import Predictor, scores_from_logits
from .spec import RunSpec
from .data.windows import window_average

__all__ = ["OnnxClassifier", "scores_from_logits", "read_onnx_metadata", "stale_reason"]

ONNX_NAME = "model.onnx"  # what audioclf.export writes (it imports these two from here: this side has no torch)
METADATA_KEY = "audioclf"


def read_onnx_metadata(path, session=None) -> dict:
    """The ``audioclf`` JSON metadata of an exported model: from the ONNX file, else its ``.json`` sidecar."""
    path = Path(path)
    text = None
    if session is not None:
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise ValueError(f"{path}: no audioclf metadata in the ONNX file and no {sidecar.name} next to it "
                             "(export it with `audioclf export RUN --format onnx`)")
        text = sidecar.read_text(encoding="utf-8")
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable audioclf metadata: {e}") from e
    missing = [k for k in ("labels", "sample_rate", "clip_seconds") if k not in meta]
    if missing:
        raise ValueError(f"{path}: audioclf metadata lacks {', '.join(missing)}")
    return meta


def stale_reason(path, meta: dict) -> str | None:
    """Why the export at ``path`` no longer matches the run folder it sits in (None when it does, or when it sits in
    no run folder): its ``weights_sha256`` must be the SHA-256 of the folder's ``model.safetensors``."""
    from .io_utils import file_sha256
    weights = Path(path).parent / "model.safetensors"
    if not (weights.is_file() and (weights.parent / "config.json").is_file()):
        return None
    recorded = meta.get("weights_sha256")
    if recorded is None:
        return f"{path} records no weights hash, so it cannot be matched to {weights.name}"
    if recorded != file_sha256(weights):
        return f"{path} was exported from other weights than {weights} (the run was trained again since)"
    return None


def require_onnx_runtime():
    """``onnxruntime``, or a RuntimeError naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("ONNX inference needs the 'export' extra: pip install 'audioclf[export]' "
                           "(onnxruntime is not installed)") from None
    return onnxruntime


class OnnxClassifier(Predictor):
    """An exported classifier. ``path``: a ``.onnx`` file or a run folder holding ``model.onnx``.

    ``threads``: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, path, threads: int | None = None):
        ort = require_onnx_runtime()
        path = Path(path)
        if path.is_dir():
            path = path / ONNX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = path
        self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        meta = read_onnx_metadata(path, self.session)
        stale = stale_reason(path, meta)
        if stale:
            raise ValueError(f"{stale}: export it again (audioclf export {path.parent})")
        self.metadata = meta
        self.use_spec(RunSpec.from_config(meta))
        self.frame_hop = max(1, int(round(self.sample_rate * (meta.get("frontend") or {}).get("hop_ms", 10.0) / 1000)))
        self._input = meta.get("input") or self.session.get_inputs()[0].name
        self._output = meta.get("output") or self.session.get_outputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits ``(n, classes)`` for a waveform batch ``(n, samples)`` at ``self.sample_rate``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2:
            raise ValueError(f"expected a waveform batch (n, samples), got shape {batch.shape}")
        return self.session.run([self._output], {self._input: batch})[0]

    def clip_logits(self, clips: Iterable[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Whole-clip logits ``(clips, classes)``: half-overlapping windows, logits averaged (as ``clip_logits``)."""
        return window_average(clips, self.clip_samples, self.logits, len(self.labels), batch_size)

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, {len(self.labels)} labels, {self.sample_rate} Hz)"
