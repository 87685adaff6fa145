"""ONNX export: ``export_onnx(RUN)`` writes ``RUN/model.onnx``, a self-contained waveform classifier.

The graph maps a float32 waveform ``(batch, samples)`` at the run's sample rate to logits ``(batch, classes)``;
batch and length are dynamic. The whole front end (reflect-padded STFT, mel filter bank, log, per-bin
normalisation) is inside the graph: during export ``LogMel`` computes the STFT as a strided conv1d with a fixed
windowed-DFT basis (``torch.stft`` with complex output does not export with the TorchScript exporter); it agrees
with the ``torch.stft`` path to float32 rounding (see :mod:`audioclf.features`).

Labels and audio settings travel with the file twice: as JSON under the ``audioclf`` key of the ONNX
``metadata_props`` and in a sidecar ``model.onnx.json``, so the ``.onnx`` file is usable on its own by
:class:`audioclf.onnx_predictor.OnnxClassifier` (onnxruntime + numpy, no torch).

After writing, the graph is checked with onnxruntime against the PyTorch model at two batch sizes and two lengths
(so a graph whose dynamic axes do not really work is never left behind silently).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_run
from .spec import RunSpec
from .io_utils import write_atomic, write_json_atomic
from .onnx_predictor import METADATA_KEY, ONNX_NAME  # the torch-free side owns the file's name and metadata key

__all__ = ["ExportError", "export_onnx", "export_model", "onnx_metadata", "ONNX_NAME", "METADATA_KEY"]

INPUT_NAME, OUTPUT_NAME = "waveform", "logits"
VERIFY_TOLERANCE = 1e-3  # max abs logit difference accepted by the post-export check


class ExportError(RuntimeError):
    """A model that cannot be exported (or whose exported graph fails its check); the message says why."""

    @property
    def reason(self) -> str:
        msg = str(self)
        return msg.split(": ", 1)[1] if msg.startswith("model ") and ": " in msg else msg


def onnx_metadata(model, config: dict, opset: int) -> dict:
    """What a torch-free predictor needs: labels, audio settings, task, thresholds (+ provenance)."""
    from . import __version__

    labels = list(config["labels"])
    return {
        "format": "audioclf-onnx",
        "format_version": 1,
        "audioclf_version": __version__,
        "model": getattr(model, "model_name", type(model).__name__),
        "labels": labels,
        "sample_rate": int(config["frontend"]["sample_rate"]),
        "clip_seconds": float(config["clip_seconds"]),
        "task": config.get("task", "single_label"),
        "thresholds": [float(t) for t in (config.get("thresholds") or [0.5] * len(labels))],
        "frontend": dict(config["frontend"]),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "opset": int(opset),
        "weights_sha256": config.get("weights_sha256"),  # the run's weights it came from (stale_reason checks it)
    }


def export_onnx(run_dir, out_path=None, opset: int = 17, verify: bool = True) -> Path:
    """Export the run in ``run_dir`` (or a pretrained catalogue name) to ONNX (default ``RUN/model.onnx``) plus
    ``<out>.json``; returns the path.

    Raises ``ExportError("model X cannot be exported to ONNX: reason")`` for a model that does not export.
    """
    from .weights import resolve_run

    run_dir = resolve_run(run_dir)
    model, config = load_run(run_dir)  # its weights_sha256: the weights loaded
    out = Path(out_path) if out_path is not None else Path(run_dir) / ONNX_NAME
    return export_model(model, config, out, opset=opset, verify=verify)


def export_model(model, config: dict, out_path, opset: int = 17, verify: bool = True) -> Path:
    """Export an in-memory model with its run config (``labels``, ``frontend``, ``clip_seconds``, ``task``).

    The model is exported from the CPU in eval mode; its device and train/eval mode are restored afterwards."""
    name = getattr(model, "model_name", type(model).__name__)
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise ExportError(f"ONNX export needs the 'export' extra: pip install 'audioclf[export]' ({module} is "
                              "not installed)") from None
    if not getattr(model, "supports_onnx", True):
        raise ExportError(f"model {name} cannot be exported to ONNX: "
                          f"{type(model).__name__} declares supports_onnx = False")
    out = Path(out_path)
    meta = onnx_metadata(model, config, opset)
    device = next(iter(model.parameters()), torch.empty(0)).device
    training = model.training
    try:
        return _export(model.cpu().eval(), name, meta, out, opset, verify)
    finally:
        model.to(device).train(training)


def _export(model, name: str, meta: dict, out: Path, opset: int, verify: bool) -> Path:
    sample_rate = meta["sample_rate"]
    clip_samples = RunSpec.from_config(meta).clip_samples
    dummy = torch.from_numpy(_probe_signal(2, clip_samples, sample_rate, seed=0))
    failures = []
    # The TorchScript exporter first, torch.export where it fails; the TorchScript exporter bakes the batch size
    # into nn.MultiheadAttention's reshapes, so attention models go to torch.export directly.
    exporters = ["torchscript", "dynamo"]
    if any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules()):
        exporters.reverse()
    for exporter in exporters:
        try:
            data = _export_bytes(model, dummy, opset, exporter)
            diff = _verify(model, data, clip_samples, sample_rate, name) if verify else None
            break
        except ExportError as e:
            failures.append(f"{exporter} exporter: {e.reason}")
        except Exception as e:
            failures.append(f"{exporter} exporter: {type(e).__name__}: {_first_line(e)}")
    else:
        raise ExportError(f"model {name} cannot be exported to ONNX: " + "; ".join(failures))
    meta["exporter"] = exporter
    if diff is not None:
        meta["verified_max_abs_diff"] = diff
    data = _with_metadata(data, meta)  # also records the graph's real opset in meta
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    write_json_atomic(out.with_name(out.name + ".json"), meta)
    return out


def _export_bytes(model, dummy: torch.Tensor, opset: int, exporter: str) -> bytes:
    buf = io.BytesIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # deprecation notice of the TorchScript exporter, tracer warnings
            if exporter == "torchscript":
                torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}})
            else:  # torch.export; its translation library starts at opset 18
                auto = torch.export.Dim.AUTO
                program = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=max(opset, 18),
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            dynamic_shapes=({0: auto, 1: auto},), verbose=False)
                program.save(buf)
    finally:
        quiet.setLevel(level)
    return buf.getvalue()


def _with_metadata(data: bytes, meta: dict) -> bytes:
    """The graph with ``meta`` (its ``opset`` set from the graph itself) as JSON under ``METADATA_KEY``."""
    import onnx

    proto = onnx.load_from_string(data)
    meta["opset"] = int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = f"audioclf {meta['model']} classifier: waveform (batch, samples) at {meta['sample_rate']} Hz " \
                       f"-> logits (batch, {len(meta['labels'])})"
    return proto.SerializeToString()


def _verify(model, data: bytes, clip_samples: int, sample_rate: int, name: str) -> float:
    """Max abs logit difference onnxruntime vs PyTorch over two batch sizes and two lengths; ExportError if off."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are reported through ExportError, not the runtime's log
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"model {name} cannot be exported to ONNX: onnxruntime rejects the graph: "
                          f"{_first_line(e)}") from e
    worst = 0.0
    for seed, (batch, length) in enumerate([(1, clip_samples), (3, clip_samples + clip_samples // 2 + 37)]):
        x = _probe_signal(batch, length, sample_rate, seed + 1)
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as e:
            raise ExportError(f"model {name} cannot be exported to ONNX: the graph fails on input {x.shape} "
                              f"(dynamic axes): {_first_line(e)}") from e
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise ExportError(f"model {name} cannot be exported to ONNX: output shape {got.shape} "
                              f"!= PyTorch {want.shape} for input {x.shape}")
        diff = float(np.abs(got - want).max())
        if not diff <= VERIFY_TOLERANCE:
            raise ExportError(f"model {name} cannot be exported to ONNX: the graph disagrees with PyTorch "
                              f"(max abs logit difference {diff:.3g}) for input {x.shape}")
        worst = max(worst, diff)
    return worst


def _probe_signal(batch: int, samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """Speech-like test input: a few harmonic tones with a slow envelope plus light noise, float32 (batch, samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    out = np.empty((batch, samples), np.float32)
    for b in range(batch):
        f0 = rng.uniform(100, 300)
        tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
        out[b] = 0.1 * tone * env + 0.01 * rng.standard_normal(samples)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."
