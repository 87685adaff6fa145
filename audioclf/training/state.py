"""Training state for ``audioclf train --resume``: ``RUN/state/state.safetensors`` + ``RUN/state/state.json``.

No pickle anywhere. ``state.safetensors`` holds the tensors: model weights (``model.*``), optimiser state
(``optimizer.<param index>.<name>``), EMA weights (``ema.*``) and the torch CPU generator state
(``rng.torch``, uint8). ``state.json`` holds everything else (epoch, step, batches done in the epoch, best
score, metrics rows, optimiser hyper-parameters and scalar state, EMA steps, numpy/python RNG states, the
shuffle sampler's seed/epoch/position) plus the SHA-256 and size of ``state.safetensors``.

Both are written atomically, tensors first. The same JSON is also embedded in the safetensors metadata, so
a kill between the two writes (new tensors, old JSON: the hash does not match) is detected and resolved by
using the copy that belongs to the tensors.

Exact resumption does not rely on restoring RNG state: the shuffle order of an epoch depends only on
``(seed, epoch)`` (:mod:`~audioclf.training.samplers`), the crop of an example on ``(seed, epoch, index)``
(:class:`~audioclf.data.clips.ClipDataset`), and torch's global generator is reseeded from ``(seed, step)`` before
every step, which covers mixup and augmentation.
"""
from __future__ import annotations

import hashlib
import json
import random
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import tensors_for_save
from ..io_utils import write_atomic, write_text_atomic

STATE_DIR = "state"
TENSORS_NAME = "state.safetensors"
META_NAME = "state.json"
STATE_FORMAT = 1
# settings that may change between the interrupted run and its resumption
_MAY_CHANGE = {"resume", "overwrite", "device", "workers", "compile", "checkpoint_every", "cache_dir"}


@dataclass
class TrainState:
    """Where a run stands: what ``RUN/state`` saves besides the tensors and what ``--resume`` restores."""

    epoch: int = 1  # the epoch in progress, or the last one finished when ``epoch_done``
    batches_done: int = 0  # batches of ``epoch`` done
    epoch_done: bool = False
    step: int = 0  # optimiser steps so far
    best: list | None = None  # the best epoch's selection score
    best_epoch: int = 0
    thresholds: list | None = None  # multi-label thresholds tuned at the best epoch
    rows: list = field(default_factory=list)  # metrics.csv rows
    running: list = field(default_factory=lambda: [0.0, 0])  # the epoch's loss sum and clip count so far
    settings: dict = field(default_factory=dict)  # the automatic settings the run began with
    stop: dict | None = None  # the stop rule's state (when the decay began)
    spent: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # training-loop, CPU and wall seconds to this state

    def next_batch(self) -> tuple[int, int, list]:
        """``(epoch, batch, running)`` to go on from."""
        if self.epoch_done:
            return self.epoch + 1, 0, [0.0, 0]
        return self.epoch, self.batches_done, list(self.running)


class ResumeError(RuntimeError):
    """The saved training state cannot be used to resume this run."""


def _resumable_config(cfg) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _MAY_CHANGE}


def _tensors(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors_for_save(state).items()}


def save_state(run, model, optimizer, ema, cfg, progress: TrainState) -> None:
    """Write the training state: the tensors of ``model``, ``optimizer`` and ``ema``, and ``progress``."""
    from safetensors.torch import save

    opt = optimizer.state_dict()
    tensors = _tensors("model.", model.state_dict())
    if ema is not None:
        tensors.update(_tensors("ema.", ema.module.state_dict()))
    scalars = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "format": STATE_FORMAT, "config": _resumable_config(cfg), **asdict(progress),
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "ema_steps": ema.steps if ema is not None else None,
        "rng": {"numpy": [np_state[0], np.asarray(np_state[1]).tolist(), int(np_state[2]), int(np_state[3]),
                          float(np_state[4])],
                "python": [py_state[0], list(py_state[1]), py_state[2]]},
        "sampler": {"kind": "EpochSampler", "seed": cfg.seed, "epoch": progress.epoch,
                    "position_batches": progress.batches_done},
    }
    text = json.dumps(meta)
    blob = save(tensors, metadata={"format": "pt", "audioclf_state": text})
    folder = Path(run) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / TENSORS_NAME, blob)
    meta = {"safetensors_sha256": hashlib.sha256(blob).hexdigest(), "safetensors_size": len(blob), **meta}
    write_text_atomic(folder / META_NAME, json.dumps(meta, indent=1) + "\n")


def _embedded_meta(blob: bytes) -> dict:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return json.loads(header["__metadata__"]["audioclf_state"])


def load_state(run) -> tuple[dict, dict] | None:
    """``(tensors, meta)`` of ``RUN/state``, or None when there is none. Raises ResumeError when unreadable."""
    from safetensors.torch import load

    folder = Path(run) / STATE_DIR
    path = folder / TENSORS_NAME
    if not path.is_file():
        return None
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        embedded = _embedded_meta(blob)
    except Exception as e:
        raise ResumeError(f"cannot resume: {path} is unreadable ({e})") from e
    meta = None
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if meta is None or meta.get("safetensors_sha256") != hashlib.sha256(blob).hexdigest() \
            or meta.get("safetensors_size") != len(blob):
        print(f"warning: {folder / META_NAME} does not match {TENSORS_NAME} (interrupted save); "
              f"using the copy stored inside {TENSORS_NAME}")
        meta = embedded
    if meta.get("format") != STATE_FORMAT:
        raise ResumeError(f"cannot resume: {folder} has state format {meta.get('format')!r}, expected {STATE_FORMAT}")
    return tensors, meta


def restore_state(loaded: tuple[dict, dict], model, optimizer, ema, cfg) -> TrainState:
    """Load weights, optimiser, EMA and RNG states; returns the :class:`TrainState` given to :func:`save_state`."""
    tensors, meta = loaded
    saved, now = meta["config"], _resumable_config(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ResumeError("cannot resume: settings differ from the interrupted run: "
                          + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed))

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(part("model."), strict=True)
        if ema is not None:
            ema.module.load_state_dict(part("ema."), strict=True)
            ema.steps = meta["ema_steps"]
        opt_state: dict[int, dict] = {}
        for k, v in part("optimizer.").items():
            idx, name = k.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        for k, v in meta["optimizer"]["scalars"].items():
            idx, name = k.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["optimizer"]["param_groups"]]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (RuntimeError, KeyError, ValueError) as e:
        raise ResumeError(f"cannot resume: the saved state does not match the model: {e}") from e
    torch.set_rng_state(tensors["rng.torch"])
    name, keys, pos, has_gauss, gauss = meta["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss_next))
    return TrainState(**{f.name: meta[f.name] for f in fields(TrainState) if f.name in meta})
