"""Run folders: ``model.safetensors`` (weights) + ``config.json`` (everything needed to rebuild the model).

Weights are only ever read with ``safetensors`` -- never ``torch.load`` or pickle -- so a run folder
from an untrusted source cannot execute code; stray ``model.pt`` / ``pytorch_model.bin`` / ``*.pkl``
files in it are ignored and never opened. ``config.json`` is validated against a hand-written schema
before anything is built from it, and weights are loaded strictly: a missing, unexpected or
mis-shaped tensor is an error, never a silent partial load.

Both files are written atomically (:mod:`audioclf.io_utils`), weights first and config last, so a
crash mid-save leaves the previous run loadable.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import fields
from pathlib import Path

import torch

from .io_utils import write_atomic, write_text_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_VERSION", "CheckpointError", "model_config",
           "save_run", "read_config", "validate_config", "load_run"]

_MAX_CLASSES = 100_000
_MAX_ARG = 1e6
_MAX_PARAMS = 2_000_000_000  # a run whose config describes a bigger model is refused before allocation
_MAX_MEMBERS = 64  # models in an ensemble run
_TASKS = ("single_label", "multi_label")
_RESERVED_ARGS = {"name", "num_classes", "frontend", "augment"}


class CheckpointError(Exception):
    """A run folder that cannot be saved or loaded; the message names the folder and the cause."""

    def __init__(self, run_dir, cause: str):
        self.run_dir, self.cause = str(run_dir), cause
        super().__init__(f"run {self.run_dir}: {cause}")


# ---------------------------------------------------------------------------------------------
# model <-> config


def _jsonable(value):
    """Tuples to lists, recursively, so that a value round-trips through JSON unchanged in meaning."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def model_config(model) -> dict:
    """What :func:`load_run` needs to rebuild ``model``: name, constructor args, class count, front end, augment,
    and for an :class:`~audioclf.models.ensemble.Ensemble` its member count (``ensemble``) and each member's name and
    args (``member_models``)."""
    members = getattr(model, "members", None)
    ensemble = {} if members is None else {"ensemble": len(members), "member_models": _jsonable(model.member_models)}
    return {**ensemble,
        "model": model.model_name,
        "model_args": _jsonable(dict(model.model_args)),
        "num_classes": int(model.num_classes),
        "frontend": _jsonable(model.frontend.config.to_dict()),
        "augment": _jsonable(model.frontend.augment_config.to_dict()),
    }


def tensors_for_save(state_dict: dict) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-unshared copies of a state dict's tensors (what safetensors accepts)."""
    state, seen = {}, set()
    for name, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()  # tied / view tensors: give each its own full storage
            key = t.untyped_storage().data_ptr()
        if t.numel() > 0:  # empty tensors have no storage to share
            seen.add(key)
        state[name] = t
    return state


def label_maps(labels: list[str]) -> dict:
    """``id2label`` (``{"0": label}``) and ``label2id``, as the field's model configs carry them."""
    return {"id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)}}


def save_run(run_dir, model, config: dict) -> None:
    """Write ``model.safetensors`` then ``config.json`` into ``run_dir`` (created if needed), atomically.

    ``config`` is the caller's dict (labels, clip_seconds, task, training args, metrics, ...), overlaid with
    ``format_version``, ``audioclf_version``, :func:`model_config`, ``id2label``/``label2id`` and the weights'
    ``weights_sha256`` (:func:`load_run` checks it, so weights and config from different saves never pair up). It is
    validated like :func:`read_config` and serialised before anything is written, so a save never produces a run that
    cannot be loaded.
    Raises ``CheckpointError`` for an invalid config, ``OSError`` (naming the path) when writing fails.
    """
    from . import __version__

    run = Path(run_dir)
    model_keys = ("ensemble", "member_models")  # the model says whether it is an ensemble, and of what
    full = {**{k: v for k, v in dict(config).items() if k not in model_keys},
            "format_version": FORMAT_VERSION, "audioclf_version": __version__, **model_config(model)}
    validate_config(full, run)
    try:
        from safetensors.torch import save
        weights = save(tensors_for_save(model.state_dict()), metadata={"format": "pt"})
    except Exception as e:
        raise CheckpointError(run, f"cannot serialise the weights: {e}") from e
    full.update(label_maps(full["labels"]), weights_sha256=hashlib.sha256(weights).hexdigest())
    try:
        text = json.dumps(full, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(run, f"config is not JSON-serialisable: {e}") from e
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(e.errno, f"cannot create run folder {run}: {e.strerror}") from e
    write_atomic(run / WEIGHTS_NAME, weights)
    write_text_atomic(run / CONFIG_NAME, text)


# ---------------------------------------------------------------------------------------------
# config validation


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_number(cfg: dict, key: str, prefix: str, lo: float, hi: float, integer: bool = False,
                  nullable: bool = False) -> list[str]:
    v = cfg.get(key)
    if v is None and nullable and key in cfg:
        return []
    ok = _is_int(v) if integer else _is_number(v)
    if not ok or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        null = " or null" if nullable else ""
        return [f"key '{prefix}{key}' must be {kind} in {lo:g}..{hi:g}{null}, got {v!r}"]
    return []


def _check_arg_value(value, where: str, depth: int = 0) -> list[str]:
    if value is None or isinstance(value, (str, bool)):
        return []
    if _is_int(value) or isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_ARG:
            return [f"key '{where}' must be a finite number with |value| <= {_MAX_ARG:g}, got {value!r}"]
        return []
    if isinstance(value, list) and depth < 4:
        return [err for i, v in enumerate(value) for err in _check_arg_value(v, f"{where}[{i}]", depth + 1)]
    return [f"key '{where}' must be a JSON scalar or a list of them, got {type(value).__name__}"]


_FRONTEND_ADDED = {"level_norm": False}  # front-end settings added later: what runs saved before them used


def _check_frontend(fe) -> list[str]:
    from .features import FrontendConfig

    if not isinstance(fe, dict):
        return [f"key 'frontend' must be an object, got {type(fe).__name__}"]
    allowed = [f.name for f in fields(FrontendConfig)]
    errors = [f"key 'frontend.{k}' is not a front-end setting (allowed: {', '.join(allowed)})"
              for k in fe if k not in allowed]
    errors += [f"key 'frontend.{k}' is missing" for k in allowed if k not in fe and k not in _FRONTEND_ADDED]
    if errors:
        return errors
    errors += [f"key 'frontend.{k}' must be {type(default).__name__}, got {fe[k]!r}"
               for k, default in _FRONTEND_ADDED.items() if k in fe and type(fe[k]) is not type(default)]
    errors += _check_number(fe, "sample_rate", "frontend.", 100, 400_000, integer=True)
    errors += _check_number(fe, "n_mels", "frontend.", 1, 512, integer=True)
    errors += _check_number(fe, "win_ms", "frontend.", 1, 1000)
    errors += _check_number(fe, "hop_ms", "frontend.", 1, 1000)
    nyquist = fe["sample_rate"] / 2 if _is_int(fe["sample_rate"]) else 200_000
    errors += _check_number(fe, "f_min", "frontend.", 0, nyquist)
    errors += _check_number(fe, "f_max", "frontend.", 0, nyquist, nullable=True)
    if not errors and fe["f_max"] is not None and fe["f_max"] <= fe["f_min"]:
        errors.append(f"key 'frontend.f_max' must be above f_min ({fe['f_min']!r}), got {fe['f_max']!r}")
    return errors


def _check_augment(aug) -> list[str]:
    from .augment import AugmentConfig

    if not isinstance(aug, dict):
        return [f"key 'augment' must be an object, got {type(aug).__name__}"]
    allowed = [f.name for f in fields(AugmentConfig)]
    errors = []
    for k, v in aug.items():
        if k not in allowed:
            errors.append(f"key 'augment.{k}' is not an augmentation setting (allowed: {', '.join(allowed)})")
        elif not (_is_number(v) or (isinstance(v, list) and v and all(_is_number(x) for x in v))):
            errors.append(f"key 'augment.{k}' must be a number or a list of numbers, got {v!r}")
    return errors


def _check_config(cfg) -> list[str]:
    if not isinstance(cfg, dict):
        return [f"config must be a JSON object, got {type(cfg).__name__}"]
    required = ("format_version", "model", "num_classes", "labels", "frontend", "model_args", "augment",
                "clip_seconds", "task")
    missing = [k for k in required if k not in cfg]
    if missing:
        return [f"missing required key(s): {', '.join(repr(k) for k in missing)}"]
    errors = []
    if not _is_int(cfg["format_version"]) or cfg["format_version"] != FORMAT_VERSION:
        errors.append(f"key 'format_version' must be {FORMAT_VERSION}, got {cfg['format_version']!r}"
                      " (written by an incompatible audioclf version?)")
    errors += _check_model(cfg["model"], cfg["model_args"], "")
    n_err = _check_number(cfg, "num_classes", "", 1, _MAX_CLASSES, integer=True)
    errors += n_err
    n = None if n_err else cfg["num_classes"]
    labels = cfg["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        errors.append("key 'labels' must be a list of strings")
    else:
        if n is not None and len(labels) != n:
            errors.append(f"key 'labels' has {len(labels)} entries but num_classes is {n}")
        dupes = sorted(x for x, c in Counter(labels).items() if c > 1)
        if dupes:
            errors.append(f"key 'labels' has duplicates: {dupes[:10]}")
    errors += _check_frontend(cfg["frontend"])
    errors += _check_augment(cfg["augment"])
    errors += _check_number(cfg, "clip_seconds", "", 0.01, 3600)
    if cfg["task"] not in _TASKS:
        errors.append(f"key 'task' must be one of {', '.join(_TASKS)}, got {cfg['task']!r}")
    thresholds = cfg.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, list) or not all(_is_number(x) for x in thresholds):
            errors.append("key 'thresholds' must be a list of finite numbers")
        elif n is not None and len(thresholds) != n:
            errors.append(f"key 'thresholds' has {len(thresholds)} entries but num_classes is {n}")
    if "ensemble" in cfg:
        errors += _check_number(cfg, "ensemble", "", 2, _MAX_MEMBERS, integer=True)
    if "member_models" in cfg:
        errors += _check_member_models(cfg)
    return errors


def _check_model(model, args, prefix: str) -> list[str]:
    """``model`` (a registered name) and ``model_args`` (JSON scalars or lists), keys named with ``prefix``."""
    from .models import list_models

    errors = []
    if not isinstance(model, str):
        errors.append(f"key '{prefix}model' must be a string, got {type(model).__name__}")
    elif model not in list_models():
        errors.append(f"key '{prefix}model': unknown model {model!r} (registered: {', '.join(list_models())})")
    if not isinstance(args, dict):
        errors.append(f"key '{prefix}model_args' must be an object, got {type(args).__name__}")
    else:
        for k, v in args.items():
            if k in _RESERVED_ARGS:
                errors.append(f"key '{prefix}model_args.{k}' clashes with a create_model argument")
            else:
                errors += _check_arg_value(v, f"{prefix}model_args.{k}")
    return errors


def _check_member_models(cfg: dict) -> list[str]:
    """``member_models``: one ``{"model", "model_args"}`` object per member of the ensemble, nothing else."""
    members = cfg["member_models"]
    if "ensemble" not in cfg:
        return ["key 'member_models' needs 'ensemble' (the member count)"]
    if not isinstance(members, list) or len(members) != cfg["ensemble"]:
        return [f"key 'member_models' must be a list of {cfg['ensemble']} objects (one per member)"]
    errors = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or set(m) != {"model", "model_args"}:
            errors.append(f"key 'member_models[{i}]' must be an object with the keys 'model' and 'model_args'")
        else:
            errors += _check_model(m["model"], m["model_args"], f"member_models[{i}].")
    return errors


def validate_config(config, run_dir="<config>") -> None:
    """Raise ``CheckpointError`` listing every problem with ``config`` (see :func:`read_config`)."""
    errors = _check_config(config)
    if errors:
        raise CheckpointError(run_dir, f"invalid {CONFIG_NAME}: " + "; ".join(errors))


def read_config(run_dir) -> dict:
    """Read and validate ``run_dir/config.json``; ``CheckpointError`` naming the bad key otherwise.

    Required: format_version (1), model (registered name), num_classes (1..100000), labels (unique strings,
    one per class), frontend (all FrontendConfig fields, nothing else, sane ranges), model_args (JSON scalars
    or lists, numbers within +-1e6), augment (AugmentConfig fields), clip_seconds (0.01..3600), task
    (single_label / multi_label). Optional: thresholds (one number per class), ensemble (2..64 members, weights
    ``members.K.*``) with member_models (each member's model and model_args; without it every member is ``model``).
    Other top-level keys (training args, metrics) are allowed and returned untouched.
    """
    run = Path(run_dir)
    path = run / CONFIG_NAME
    if not run.is_dir():
        raise CheckpointError(run, "no such run folder")
    if not path.is_file():
        raise CheckpointError(run, f"no {CONFIG_NAME} in {run}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(run, f"cannot read {CONFIG_NAME}: {e}") from e
    validate_config(config, run)
    config["frontend"] = {**_FRONTEND_ADDED, **config["frontend"]}
    return config


# ---------------------------------------------------------------------------------------------
# loading


def _check_state(model, state: dict, run: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(run, f"{WEIGHTS_NAME} does not match model {model.model_name!r} built from "
                                   f"{CONFIG_NAME}: " + " | ".join(problems))


def load_run(run_dir, device="cpu"):
    """Rebuild the model of a run folder and load its weights strictly; returns ``(model, config)`` in eval mode.

    Weights are read only from ``model.safetensors``, once, with ``safetensors.torch.load`` (no pickle); the
    returned config's ``weights_sha256`` is the SHA-256 of the bytes loaded (what reports and exports record).
    """
    from safetensors.torch import load

    from .models import create_model
    from .models.ensemble import Ensemble

    run = Path(run_dir)
    config = read_config(run)
    weights = run / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(run, f"no {WEIGHTS_NAME} in {run}")
    def build():
        one = lambda m: create_model(m["model"], config["num_classes"], frontend=config["frontend"],  # noqa: E731
                                     augment=config["augment"], **m["model_args"])
        if "ensemble" not in config:
            return one(config)
        # an older ensemble run of one architecture lists no member_models: every member is "model"
        return Ensemble([one(m) for m in config.get("member_models", [config] * config["ensemble"])])
    try:
        with torch.device("meta"):  # size the model first, without allocating anything
            n_params = sum(t.numel() for t in build().state_dict().values())
        if n_params > _MAX_PARAMS:
            raise CheckpointError(run, f"{CONFIG_NAME} describes a model with {n_params:.3g} parameters "
                                       f"(limit {_MAX_PARAMS:.0e}); model_args {config['model_args']} refused")
        model = build()
    except (TypeError, ValueError) as e:
        raise CheckpointError(run, f"cannot build model {config['model']!r} from {CONFIG_NAME}: {e}") from e
    try:
        data = weights.read_bytes()  # one read: the bytes hashed are the bytes loaded
        state = load(data)
    except OSError as e:
        raise CheckpointError(run, f"cannot read {WEIGHTS_NAME}: {e.strerror or e}") from e
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise CheckpointError(run, f"cannot read {WEIGHTS_NAME}: {e}") from e
    _check_state(model, state, run)
    expected, loaded = config.get("weights_sha256"), hashlib.sha256(data).hexdigest()
    if expected is not None and loaded != expected:
        raise CheckpointError(run, f"{WEIGHTS_NAME} is not the file {CONFIG_NAME} was saved with (its SHA-256 "
                                   "differs from weights_sha256): the two come from different saves")
    config["weights_sha256"] = loaded  # also for runs saved before configs held it
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(run, f"cannot load {WEIGHTS_NAME}: {e}") from e
    model.to(device)
    model.eval()
    return model, config
