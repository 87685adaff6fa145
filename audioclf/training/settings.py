"""The settings of a run: each ``None`` in :class:`TrainConfig` filled from the data (with its reason), the
augmentation policy, the precision, and the checks made before any work."""
from __future__ import annotations

import torch

from ..augment import AugmentConfig
from ..inference import bf16_is_native
from ..models import create_model, list_models
from ..run_folder import claim
from . import autoconfig, distributed
from .config import TrainConfig
from .finetune import finetune_augment, init_source


def resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """bf16 autocast: as asked, or (``None``) wherever the hardware computes bf16 natively: a CUDA GPU with bf16
    units, or a CPU with AVX-512 BF16 or AMX. Where bf16 is only emulated it is slower than float32, so it stays
    off."""
    return bf16_is_native(device) if amp is None else amp


def split_seed(cfg: TrainConfig) -> int:
    """The seed of the hold-outs and of the data summary the automatic settings come from: ``--split-seed``, else
    ``--seed``. The training randomness (initialisation, order, augmentation) follows ``--seed`` alone."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


AUTO_SETTINGS = ("sample_rate", "clip_seconds", "model", "model_args", "batch_size", "epochs")  # chosen from the data


def resolve_settings(cfg: TrainConfig, manifest, n_train: int, resumed: dict | None = None,
                     validated: bool = True) -> dict:
    """Fill every ``None`` in ``cfg`` from the data; returns the concrete settings, with ``reasons``
    (``{setting: why}`` of each automatic choice). ``resumed``: the interrupted run's ``AUTO_SETTINGS``
    (``--resume``), which its automatic choices keep, so that it ends as it would have, also when this version of
    audioclf would choose otherwise (as the precision does). ``validated``: there are validation clips to stop on."""
    summary = autoconfig.summarise(manifest, split_seed(cfg))
    print(f"data: {summary.describe()}")
    batch_size = cfg.batch_size or autoconfig.choose_batch_size(n_train)
    model, model_args = autoconfig.choose_model(n_train)
    if cfg.model:
        model, model_args = cfg.model, {}
    if cfg.width is not None:
        model_args["width"] = cfg.width
    finetune = cfg.init_spec() is not None
    chosen = {
        "sample_rate": cfg.sample_rate or autoconfig.choose_sample_rate(summary),
        "clip_seconds": cfg.clip_seconds or autoconfig.choose_clip_seconds(summary),
        "model": model, "model_args": model_args, "batch_size": batch_size,
        "epochs": cfg.epochs or autoconfig.choose_epochs(n_train, batch_size, model, finetune, validated),
        "balance": cfg.balance == "on" or (cfg.balance == "auto" and summary.imbalance > 3),
    }
    reasons = {
        "sample_rate": f"the files' median rate, {summary.sample_rate} Hz, at most {autoconfig.MAX_SAMPLE_RATE} Hz",
        "clip_seconds": f"90% of the files last {summary.duration_p90:.2f} s or less (0.5-10 s; longer ones are windowed)",
        "model": f"the compact CNN for {n_train} training files",
        "batch_size": f"{n_train} training files",
        "epochs": (f"a ceiling of {autoconfig.CEILING if validated else 1} x "
                   f"{autoconfig.target_steps(model, finetune)} steps; training ends when validation stops improving"
                   if validated else f"{autoconfig.target_steps(model, finetune)} steps: no validation clips to stop on"),
    }
    auto = [k for k in AUTO_SETTINGS if k != "model_args" and getattr(cfg, k) is None]
    if resumed:
        kept = auto + (["model_args"] if "model" in auto else [])  # an automatic model comes with its arguments
        chosen.update({k: resumed[k] for k in kept if k in resumed})
        model_args = chosen["model_args"]
    tag = " (kept from the interrupted run)" if resumed else ""
    for k in ("sample_rate", "clip_seconds", "model", "batch_size", "epochs"):
        if k in auto:
            print(f"auto: {k}={chosen[k]}{tag}: {reasons[k]}")
    print(f"settings: model_args={model_args}, class-balanced loss={'on' if chosen['balance'] else 'off'}"
          + (f" (auto: class imbalance {summary.imbalance:.1f}x)" if cfg.balance == "auto" else ""))
    chosen["auto"] = auto
    chosen["reasons"] = {f"{k}={chosen[k]}": reasons[k] for k in auto}
    chosen["data_summary"] = vars(summary)
    return chosen


DEFAULT_LR = 3e-3  # peak learning rate from scratch (FINETUNE_LR with --pretrained)


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """The training augmentation: the default policy, the fine-tuning one with ``--pretrained``
    (:func:`~audioclf.training.finetune.finetune_augment`), none with ``--no-augment``; then ``--aug`` overrides."""
    if not cfg.augment:
        return AugmentConfig.off().with_overrides(cfg.aug)
    base = finetune_augment(cfg.mixup) if cfg.init_spec() else AugmentConfig(mixup_alpha=cfg.mixup)
    if not cfg.specaugment:
        base = AugmentConfig(**{**base.to_dict(), "freq_masks": 0, "time_masks": 0})
    return base.with_overrides(cfg.aug)


def check_models(cfg: TrainConfig) -> None:
    """Refuse a bad ``--ensemble``, an unknown ``--model`` name or an unusable ``--pretrained`` source before any
    work; several names without ``--ensemble`` make an ensemble of one member each."""
    names = cfg.model_names()
    unknown = [name for name in names if name not in list_models()]
    if unknown:
        raise ValueError(f"--model: unknown model(s) {', '.join(map(repr, unknown))}; registered: "
                         f"{', '.join(list_models())}")
    if len(names) == 1:
        cfg.model = names[0]
    elif len(names) > 1 and cfg.ensemble == 1:
        cfg.ensemble = len(names)
    if cfg.ensemble < 1:
        raise ValueError(f"--ensemble must be at least 1, got {cfg.ensemble}")
    if cfg.freeze_backbone and not cfg.init_spec():
        raise ValueError("--freeze-backbone needs --pretrained (a backbone to freeze)")
    if cfg.init_spec():  # fetched and checked now: a bad name, hash or file fails before any work
        fixed = init_source(cfg.pretrained, cfg.cache_dir).config
        if any(name != fixed["model"] for name in names):
            raise ValueError(f"--model {cfg.model}: --pretrained {cfg.pretrained} is a {fixed['model']} model")
        if cfg.sample_rate and cfg.sample_rate != fixed["frontend"]["sample_rate"]:
            raise ValueError(f"--sample-rate {cfg.sample_rate}: --pretrained {cfg.pretrained} takes audio at "
                             f"{fixed['frontend']['sample_rate']} Hz (files are resampled to it)")
    if len(names) > cfg.ensemble:
        raise ValueError(f"--model names {len(names)} models but --ensemble {cfg.ensemble} trains fewer members")
    with torch.device("meta"):  # built without memory, for their front ends' kinds
        kinds = {name: type(create_model(name, 2).frontend).__name__ for name in names}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"--model {cfg.model}: an ensemble's members share one front end, and these differ "
                         f"({', '.join(f'{n}: {k}' for n, k in kinds.items())})")


def checked_config(out, settings: dict) -> tuple[TrainConfig, AugmentConfig]:
    """``settings`` (:class:`TrainConfig` fields) checked before any work: ranges and choices, the device, the
    augmentation, the model names and the ``--pretrained`` source; then ``out`` claimed (rank 0), unless None."""
    cfg = TrainConfig(**settings)
    cfg.check()
    augment = augment_config(cfg)  # a bad --aug fails here
    check_models(cfg)
    if out is not None and distributed.launch_rank() == 0:  # the other ranks write into the folder rank 0 claimed
        claim(out, overwrite=cfg.overwrite, resume=cfg.resume)
    return cfg, augment
