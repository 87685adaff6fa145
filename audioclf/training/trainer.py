"""The training loop, top to bottom: data -> split -> cache -> model -> epochs -> best checkpoint -> test report."""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..augment import AugmentConfig, mixup, run_augmentations_eagerly
from ..checkpoint import load_run, save_run
from ..data.cache import AudioCache
from ..data.clips import ClipDataset
from ..data.manifest import load_manifest
from ..data.splits import (MIN_VALIDATION_CLIPS, MIN_VALIDATION_PER_CLASS, VALIDATION_SHARE, label_matrix, make_split,
                           validation_fraction)
from ..devices import resolve_device
from ..evaluation.evaluate import build_report, summary_line, write_report
from ..evaluation.metrics import tune_thresholds
from ..evaluation.plots import plot_curves
from ..features import FrontendConfig
from ..inference import bf16_is_native, clip_logits, scores_from_logits
from ..io_utils import write_json_atomic, write_text_atomic
from ..models import create_model, list_models
from ..run_folder import claim
from . import autoconfig, distributed
from .config import TrainConfig
from .ema import ModelEma
from .finetune import FINETUNE_LR, finetune_augment, init_source
from .resume import EpochSampler, GroupBatchSampler, load_state, restore_state, save_state, seed_step
from .schedule import StopRule, warmup_stable_decay
from .selection import candidates, selection_score, train_candidates, write_validation


class TrainError(RuntimeError):
    """The run cannot go on (e.g. no usable files)."""


def resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """bf16 autocast: as asked, or (``None``) wherever the hardware computes bf16 natively: a CUDA GPU with bf16
    units, or a CPU with AVX-512 BF16 or AMX. Where bf16 is only emulated it is slower than float32, so it stays
    off. Default ``cnn`` on FSDD, 2-core AMD EPYC with AVX-512 BF16 (docs/experiments.md): 60.1-64.5 s of training
    instead of 87.7-90.2 s, the same test accuracy (seeds 0-2)."""
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


def probe_augmentation(d: TrainingData, cfg: TrainConfig, augment: AugmentConfig) -> AugmentConfig:
    """The augmentation with the settings that would erase a label's cue switched off, and ``cfg.level_norm``
    decided (:func:`~audioclf.training.autoconfig.choose_augmentation`); prints each choice and its reason and
    adds them to ``d.settings["reasons"]``. Probed on single-label clips in memory; otherwise level
    normalisation stays on."""
    given = {item.partition("=")[0].strip() for item in (cfg.aug or "").split(",") if "=" in item}
    if d.multilabel or d.source:
        level_norm, reasons = (True if cfg.level_norm is None else cfg.level_norm), {
            "level_norm=on": "cues are probed on single-label data held in memory"}
    else:
        ids = d.y.argmax(axis=1)
        augment, level_norm, reasons = autoconfig.choose_augmentation(
            augment, cfg.level_norm, given, (d.audio(d.train), ids[d.train]), (d.audio(d.val), ids[d.val]),
            len(d.labels), d.settings["sample_rate"], split_seed(cfg))
    if cfg.level_norm is not None:
        reasons.pop("level_norm=on", None)
    cfg.level_norm = level_norm
    for k, why in reasons.items():
        print(f"auto: {k}: {why}")
    d.settings["reasons"].update(reasons)
    return augment


def param_groups(model: torch.nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on norms, biases and other 1-D parameters (and position/class tokens); the backbone's
    learning rate is ``lr_scale`` = ``backbone_lr_scale`` times the head's (``model.head_name``)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")))
        scale = 1.0 if name.startswith(model.head_name + ".") else backbone_lr_scale
        groups.setdefault((decays, scale), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, smoothing: float,
            class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with soft targets (single-label) or binary cross-entropy (multi-label)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=class_weights)
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=smoothing)


def train_step(step_model, model, optimizer, ema, wave, target, lr: float, cfg: TrainConfig, multilabel: bool,
               class_weights) -> float:
    """One optimiser step on a batch (mixup, autocast, clipping, EMA update); returns the batch loss. Raises
    ``TrainError`` before the step when the gradients are not finite: the weights would turn NaN and every later
    epoch, checkpoint and report with them."""
    aug = model.frontend.augment_config  # --mixup, --no-augment and --aug mixup_alpha=... all end up here
    if not multilabel and aug.mixup_alpha > 0 and torch.rand(()) < aug.mixup_prob:
        wave, target = mixup(wave, target, aug.mixup_alpha)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        logits = step_model(wave)
    loss = loss_fn(logits.float(), target, multilabel, cfg.label_smoothing, class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # the norm before clipping (an infinite limit clips nothing): one reduction, checked on every step
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not torch.isfinite(norm):
        raise TrainError(f"the gradients are not finite (norm {norm.item()}, loss {loss.item():.4g}): training "
                         "diverged or a kernel computed them wrongly; nothing of this step was applied. Try a lower "
                         "--lr, or --no-amp / --no-compile")
    optimizer.step()
    if ema:
        ema.update(model)
    return loss.item()


def validate(model, audio, targets: np.ndarray, labels, clip_samples: int, multilabel: bool, device):
    """Whole-clip validation: ``(loss, accuracy or mAP, scores (clips, classes))``."""
    logits = clip_logits(model, audio, clip_samples, device=device)
    val_loss = loss_fn(torch.from_numpy(logits).float(), torch.from_numpy(targets), multilabel, 0.0, None).item()
    scores = scores_from_logits(logits, multilabel)
    report = build_report(scores, targets, labels, multilabel)
    return val_loss, report["mAP"] if multilabel else report["accuracy"], scores


def write_skipped(run: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    write_text_atomic(run / "skipped.csv", buf.getvalue())


SHOWN_SKIPPED = 10  # skipped files named in the output (all of them in skipped.csv)


def report_skipped(skipped: list[tuple[str, str]], run: Path) -> None:
    """Name the first ``SHOWN_SKIPPED`` unusable files with their reasons; the count and ``skipped.csv`` for all."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} file(s) that cannot be used (all listed in {run / 'skipped.csv'}):")
    for path, reason in skipped[:SHOWN_SKIPPED]:
        print(f"  {path}: {reason}")
    if len(skipped) > SHOWN_SKIPPED:
        print(f"  ... and {len(skipped) - SHOWN_SKIPPED} more")


SPLIT_NAME = "split.csv"  # path,subset of every item the run was split from: evaluate knows the clips it saw


def write_split(run: Path, manifest, split) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "subset"])
    for subset, idx in (("train", split.train), ("validation", split.val), ("test", split.test)):
        writer.writerows((manifest.items[i].path, subset) for i in idx)
    write_text_atomic(run / SPLIT_NAME, buf.getvalue())


class ProgressLines:
    """Within an epoch, where no progress bar shows (output to a file or a pipe): a line every ``every`` seconds."""

    def __init__(self, desc: str, total: int, enabled: bool, every: float = 30.0):
        self.desc, self.total, self.enabled, self.every = desc, total, enabled, every
        self.start = self.last = time.monotonic()

    def update(self, done: int, loss: float) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            print(f"  {self.desc}: batch {done}/{self.total}, train_loss {loss:.4f}, {now - self.start:.0f} s",
                  flush=True)


def write_metrics(run: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run / "metrics.csv", buf.getvalue())


@dataclass
class TrainingData:
    """What a run trains, validates and tests on (indices into ``manifest.items``), decoded."""

    manifest: object
    source: object | None  # tar shards, streamed (training clips are then not in ``clips``); None: the decode cache
    cache: AudioCache
    labels: list[str]
    multilabel: bool
    settings: dict  # the concrete settings (resolve_settings)
    init: object | None  # the --pretrained source (finetune.InitSource)
    clips: dict  # path -> float32 (samples,) at settings["sample_rate"]
    skipped: list  # (path, reason)
    train: list[int]
    val: list[int]
    test: list[int]
    y: np.ndarray  # (items, classes) 0/1 targets

    def audio(self, idx) -> list[np.ndarray]:
        return [self.clips[self.manifest.items[i].path] for i in idx]


def prepare_data(cfg: TrainConfig, data, run: Path, main: bool, resumed: dict | None = None) -> TrainingData:
    """Manifest, split, settings (filled from the data, or from the --pretrained source; ``resumed``: as in
    :func:`resolve_settings`) and decoded clips; writes ``skipped.csv`` (rank 0). Fills ``cfg``'s audio settings when
    shards or a fine-tune fix them."""
    from ..data import shards as shard_data
    source = shard_data.ShardSource(data) if shard_data.is_shard_source(data) else None  # tar shards: streamed
    manifest = (source.manifest() if source else load_manifest(data, cfg.pattern)).require_classes()
    if source:  # the shards' audio is already decoded at one rate
        cfg.sample_rate, cfg.clip_seconds = source.sample_rate, cfg.clip_seconds or source.clip_seconds
    labels, multilabel = manifest.labels, manifest.multilabel
    if cfg.noise_dir is None and manifest.noise_dir:
        cfg.noise_dir = manifest.noise_dir
        print(f"noise: background noise for augmentation from the data set's {cfg.noise_dir}")
    split = make_split(manifest, cfg.test_fold, cfg.test_fraction, cfg.val_fraction, split_seed(cfg))
    init = init_source(cfg.pretrained, cfg.cache_dir) if cfg.init_spec() else None
    if init:  # a fine-tune keeps the source's front end and architecture
        fixed = init.config
        if source and cfg.sample_rate != fixed["frontend"]["sample_rate"]:
            raise TrainError(f"{data}: tar shards at {cfg.sample_rate} Hz; --pretrained {cfg.pretrained} needs "
                             f"{fixed['frontend']['sample_rate']} Hz (pack them at that rate)")
        cfg.sample_rate, cfg.model = fixed["frontend"]["sample_rate"], fixed["model"]
        cfg.n_mels, cfg.level_norm = fixed["frontend"]["n_mels"], fixed["frontend"]["level_norm"]
        if init.keeps_window:
            cfg.clip_seconds = cfg.clip_seconds or fixed["clip_seconds"]
        print(f"fine-tune: from {init.spec} ({fixed['model']}, {cfg.sample_rate} Hz); head lr {cfg.lr or FINETUNE_LR:g}, "
              f"backbone lr x{cfg.backbone_lr_scale:g}" + (", backbone frozen" if cfg.freeze_backbone else ""))
    lr_reason = None if cfg.lr else (
        "fine-tuning: one peak rate for the new head and the pretrained backbone (a higher one unlearns the features)"
        if init else "from scratch: the peak rate of AdamW after the warm-up; the schedule decays it on the validation curve")
    cfg.lr = cfg.lr or (FINETUNE_LR if init else DEFAULT_LR)
    s = resolve_settings(cfg, manifest, len(split.train), resumed, validated=bool(split.val))
    if lr_reason:
        s["reasons"][f"lr={cfg.lr:g}"] = lr_reason
        print(f"auto: lr={cfg.lr:g}: {lr_reason}")
    if init:
        s["model_args"] = dict(init.config["model_args"])
    cache = AudioCache(cfg.cache_dir, s["sample_rate"])
    t0 = time.perf_counter()
    with distributed.main_first():  # rank 0 decodes into the cache; the others wait, then read it
        if source:  # validation and test in memory; training streamed
            clips, bad = source.load(manifest.items[i].path for i in split.val + split.test), []
        else:
            clips, bad = cache.load([it.path for it in manifest.items])
    print(f"audio: {len(clips)} clips decoded or read from {cache.dir} in {time.perf_counter() - t0:.1f} s")
    skipped = manifest.skipped + bad
    if main:
        write_skipped(run, skipped)
        write_split(run, manifest, split)
    report_skipped(skipped, run)
    keep = lambda idx: [i for i in idx if source or manifest.items[i].path in clips]  # noqa: E731
    train_idx, val_idx, test_idx = keep(split.train), keep(split.val), keep(split.test)
    print(f"split: train {len(train_idx)}, validation {len(val_idx)}, test {len(test_idx)} usable clips"
          + (f" ({split.declared})" if split.declared else "")
          + f"; {len(labels)} classes, {'multi' if multilabel else 'single'}-label"
          + ("; validation shares train's groups (the test fold does, or train has under 10 groups)"
             if split.val_shares_groups else ""))
    if not train_idx:
        raise TrainError(f"no usable training files in {data} ({len(skipped)} skipped, named above)")
    s["reasons"].update(note_validation(cfg, len(split.train) + len(split.val), val_idx, label_matrix(manifest, labels)))
    return TrainingData(manifest, source, cache, labels, multilabel, s, init, clips, skipped, train_idx,
                        val_idx, test_idx, label_matrix(manifest, labels))


SMALL_VALIDATION = 50  # fewer validation clips (or under 3 of a class) cannot tell nearby epochs apart


def note_validation(cfg: TrainConfig, n_train: int, val_idx: list[int], y: np.ndarray) -> dict:
    """Print the automatic validation share and its reason, and a note when validation is too small to choose an
    epoch by (or missing); returns ``{setting: reason}`` of the automatic share. ``n_train``: training and
    validation clips; ``y``: ``(clips, classes)`` labels."""
    reasons = {}
    if cfg.val_fraction is None and val_idx:
        share = validation_fraction(n_train, y.shape[1])
        reasons[f"val_fraction={share:.2f}"] = (f"at least {MIN_VALIDATION_CLIPS} clips and {MIN_VALIDATION_PER_CLASS} "
                                                f"a class, within {VALIDATION_SHARE[0]}-{VALIDATION_SHARE[1]} of the "
                                                "training clips")
    for k, why in reasons.items():
        print(f"auto: {k}: {why}")
    if not val_idx:
        print("note: no validation clips: training runs to its ceiling and keeps the last epoch")
        return reasons
    fewest = int(y[val_idx].sum(axis=0).min())
    if len(val_idx) < SMALL_VALIDATION or fewest < 3:
        print(f"note: validation holds {len(val_idx)} clips ({fewest} of the rarest class; one clip is "
              f"{100 / len(val_idx):.1f} accuracy points): too few to tell nearby epochs apart, so the best epoch "
              f"and the stop follow its loss and may be noisy; more data or a larger --val-fraction steady them")
    return reasons


def training_loader(d: TrainingData, cfg: TrainConfig, clip_samples: int, rank: int, world: int):
    """(dataset, sampler, loader) of this rank's training batches: ``batch_size`` stays the global batch, each
    rank takes its share; the order depends on (seed, epoch) only, so a run resumes mid-epoch exactly."""
    s = d.settings
    if d.source and cfg.group_batches:
        raise TrainError("--group-batches needs the files in memory, not streamed from tar shards")
    if d.source:
        return d.source.training_loader([d.manifest.items[i].path for i in d.train], d.y[d.train], clip_samples,
                                        s["batch_size"], rank, world, cfg.workers, cfg.shuffle_buffer, cfg.seed)
    rank_batch = max(1, s["batch_size"] // world)
    dataset = ClipDataset(d.audio(d.train), d.y[d.train], clip_samples, train=True, seed=cfg.seed)
    if cfg.group_batches:
        groups = [d.manifest.items[i].group for i in d.train]
        if world > 1 or None in groups:
            raise TrainError("--group-batches needs a group for every training file (a group column or pattern "
                             "group) and one process")
        sampler = GroupBatchSampler(groups, rank_batch, cfg.seed)
        print(f"group batches: {len(sampler) // rank_batch} batches an epoch, each from one of "
              f"{len(sampler.by_group)} groups")
    elif world > 1:
        sampler = distributed.DistributedEpochSampler(dataset, cfg.seed, drop_last=len(dataset) > s["batch_size"])
    else:
        sampler = EpochSampler(len(dataset), cfg.seed)
    loader = DataLoader(dataset, batch_size=rank_batch, sampler=sampler, drop_last=len(dataset) // world > rank_batch,
                        num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
    return dataset, sampler, loader


def test_best_checkpoint(run: Path, device, d: TrainingData, clip_samples: int, thresholds, best_epoch: int,
                         train_seconds: float, validation: dict | None = None, started: tuple | None = None) -> dict:
    """Reload the saved best model, test it, write ``report.json`` and the final ``config.json`` (with
    ``validation``: the best epoch's ``val_*`` figures; ``started``: the run's ``(process_time, perf_counter)`` at
    its start, for its CPU and wall seconds); the report."""
    best_model, config = load_run(run, device)
    best_model.to(memory_format=torch.channels_last)
    report = {}
    if d.test:
        logits = clip_logits(best_model, d.audio(d.test), clip_samples, device=device)
        report = build_report(scores_from_logits(logits, d.multilabel), d.y[d.test], d.labels, d.multilabel,
                              np.asarray(thresholds) if thresholds else None)
        write_report(report, run)
        print(f"test ({len(d.test)} clips, best epoch {best_epoch}): {summary_line(report)}")
    report_keys = ("accuracy", "balanced_accuracy", "macro_f1", "mAP", "micro_f1")
    config["metrics"] = {"train_seconds": train_seconds, "best_epoch": best_epoch, **(validation or {}),
                         **{f"test_{k}": report[k] for k in report_keys if k in report}}
    if started:
        config["metrics"].update(cpu_seconds=time.process_time() - started[0], wall_seconds=time.perf_counter() - started[1])
    config["skipped_files"] = len(d.skipped)
    write_json_atomic(run / "config.json", config)
    print(f"trained in {train_seconds:.1f} s; run folder: {run}  (report: {run / 'report.json'})")
    return report


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


def train(data, out, **settings) -> dict:
    """Train on ``data`` (folder, CSV or folder + ``pattern``) into the run folder ``out``; returns the test report.

    ``settings`` are :class:`TrainConfig` fields.
    """
    started = time.process_time(), time.perf_counter()
    cfg = TrainConfig(**settings)
    cfg.check()  # ranges, choices and the device, before any work
    augment = augment_config(cfg)  # a bad --aug fails here
    check_models(cfg)
    if distributed.launch_rank() == 0:  # the other ranks write into the folder rank 0 claimed
        claim(out, overwrite=cfg.overwrite, resume=cfg.resume)
    auto_start, (starts, start_reason) = cfg.pretrained is None, candidates(cfg, data, out)
    if len(starts) > 1:
        print(f"auto: pretrained: {start_reason}")
        return train_candidates(data, out, cfg, starts)
    if auto_start:
        cfg.pretrained = starts[0]
        print(f"auto: pretrained={cfg.pretrained}: {start_reason}")
    if cfg.ensemble > 1:
        from .ensemble import train_ensemble
        return train_ensemble(data, out, cfg)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dist_info, dist_device = distributed.setup_from_env(cfg.device)  # torchrun: one process per device
    device, main, world = dist_device or device, dist_info.main, dist_info.world_size
    cfg.nproc = world  # recorded in config.json: the processes that actually trained
    saved_state = load_state(run) if cfg.resume else None
    if cfg.amp is None and saved_state:  # an automatic choice resumes as it ran, even on other hardware
        cfg.amp = saved_state[1]["config"].get("amp")
    cfg.amp = resolve_amp(cfg.amp, device)  # recorded too: what ran, not "auto"

    # --- data: manifest, split, settings, decoded clips
    d = prepare_data(cfg, data, run, main, saved_state[1].get("settings") if saved_state else None)
    s, labels, multilabel, y = d.settings, d.labels, d.multilabel, d.y
    train_idx, val_idx, test_idx, init = d.train, d.val, d.test, d.init
    sr, clip_samples = s["sample_rate"], int(round(s["clip_seconds"] * s["sample_rate"]))
    augment = probe_augmentation(d, cfg, augment)
    if auto_start:
        s["reasons"][f"pretrained={cfg.pretrained}"] = start_reason

    # --- model, optimiser
    frontend = (FrontendConfig(**init.config["frontend"]) if init
                else FrontendConfig(sample_rate=sr, n_mels=cfg.n_mels, level_norm=cfg.level_norm))
    model = create_model(s["model"], len(labels), frontend, augment, **s["model_args"])
    if init:
        init.apply(model, cfg.freeze_backbone)
    model.to(device, memory_format=torch.channels_last)  # ~1.5x faster conv training steps on CPU
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # before the noise: the EMA needs no copy
    if cfg.noise_dir:
        model.frontend.wave_augment.set_noise(load_noise_bank(cfg.noise_dir, sr, clip_samples, d.cache))
    step_model = model
    if cfg.compile:
        run_augmentations_eagerly(model)
        step_model = torch.compile(model)
    if world > 1:  # gradients averaged across ranks; EMA, evaluation and checkpoints use the unwrapped `model`
        step_model = torch.nn.parallel.DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.backbone_lr_scale if init else 1.0),
                                  lr=cfg.lr)
    class_weights = None
    if s["balance"]:
        counts = y[train_idx].sum(0)
        class_weights = torch.tensor(counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32,
                                     device=device)
    dataset, sampler, loader = training_loader(d, cfg, clip_samples, dist_info.rank, world)
    epochs, steps_per_epoch = s["epochs"], len(loader)
    warmup_steps = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    target = autoconfig.target_steps(s["model"], bool(init))
    stop = StopRule(epochs * steps_per_epoch, steps_per_epoch,
                    cfg.patience or autoconfig.choose_patience(target, steps_per_epoch), min_steps=target // 2)
    config = {"labels": labels, "task": "multi_label" if multilabel else "single_label",
              "clip_seconds": s["clip_seconds"], "training": {**cfg.to_dict(), **{k: v for k, v in s.items()}},
              "data": str(data), "data_sha256": d.manifest.fingerprint(),
              "split_sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
              **({"init": init.provenance()} if init else {})}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {s['model']} {s['model_args']} ({n_params / 1e6:.2f} M parameters) on {device}"
          f"{' with bf16 autocast' if cfg.amp else ''}; "
          f"at most {epochs} epochs x {steps_per_epoch} steps; the learning rate decays after {stop.patience} epochs "
          f"without validation improvement (from step {stop.min_steps}), and training ends with the decay")

    # --- epochs
    eval_model = lambda: ema.module if ema else model  # noqa: E731
    val_audio, val_y = d.audio(val_idx), y[val_idx]
    val_paths = [str(d.manifest.items[i].path) for i in val_idx]
    rows, best, best_epoch, step, thresholds = [], None, 0, 0, None
    start_epoch, start_batch, running = 1, 0, (0.0, 0)
    if cfg.resume and saved_state is None:
        print(f"--resume: no saved state in {run / 'state'}; starting from the beginning")
    if saved_state:
        p = restore_state(saved_state, model, optimizer, ema, cfg)
        rows, best, best_epoch, step, thresholds = p["rows"], p["best"], p["best_epoch"], p["step"], p["thresholds"]
        start_epoch, start_batch, running = p["epoch"], p["batches_done"], tuple(p["running"])
        if p["epoch_done"]:
            start_epoch, start_batch, running = p["epoch"] + 1, 0, (0.0, 0)
        stop = StopRule(**p.get("stop", stop.state()))
        if p["epoch_done"] and stop.finished(step):  # it had ended
            start_epoch = epochs + 1
        config.update(best_epoch=best_epoch, **({"thresholds": thresholds} if thresholds else {}))
        print(f"resumed from {run / 'state'}: epoch {start_epoch}, batch {start_batch}, step {step}")

    def checkpoint(epoch, batches_done, epoch_done, running):
        if not main:  # rank 0 writes every file
            return
        save_state(run, model, optimizer, ema, cfg, {
            "epoch": epoch, "batches_done": batches_done, "epoch_done": epoch_done, "step": step,
            "best": list(best) if best is not None else None, "best_epoch": best_epoch,
            "thresholds": thresholds, "rows": rows, "running": list(running),
            "settings": {k: s[k] for k in AUTO_SETTINGS}, "stop": stop.state()})
    t_start = time.perf_counter()
    for epoch in range(start_epoch, epochs + 1):
        t_epoch = time.perf_counter()
        step_model.train()
        if init and cfg.freeze_backbone:  # a frozen backbone keeps its batch-norm statistics too
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        dataset.set_epoch(epoch)
        first_batch = start_batch if epoch == start_epoch else 0
        sampler.set_epoch(epoch, first_batch * s["batch_size"])  # skip the batches done before an interruption
        total, count = running if epoch == start_epoch else (0.0, 0)
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None, total=steps_per_epoch,
                   initial=first_batch)  # a bar on a terminal; elsewhere ProgressLines
        lines = ProgressLines(f"epoch {epoch}", steps_per_epoch, enabled=bar.disable and main)
        for batch, (wave, target) in enumerate(bar, start=first_batch):
            seed_step(cfg.seed + 7919 * dist_info.rank, step)  # mixup/augmentation randomness from (seed, step): resumes identically
            wave, target = wave.to(device, non_blocking=True), target.to(device, non_blocking=True)
            lr = warmup_stable_decay(step, warmup_steps, stop.decay_start, stop.decay_steps, cfg.lr)
            try:
                loss = train_step(step_model, model, optimizer, ema, wave, target, lr, cfg, multilabel, class_weights)
            except TrainError as e:
                raise TrainError(f"epoch {epoch}, step {step + 1}: {e}") from None
            total, count, step = total + loss * len(wave), count + len(wave), step + 1
            lines.update(batch + 1, total / count)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and batch + 1 < steps_per_epoch:
                checkpoint(epoch, batch + 1, False, (total, count))
        row = {"epoch": epoch, "train_loss": distributed.all_reduce_mean(total / max(1, count)), "lr": lr}
        if val_idx:
            val_loss, metric, scores = validate(eval_model(), val_audio, val_y, labels, clip_samples, multilabel, device)
            row.update(val_loss=val_loss, **({"val_mAP": metric} if multilabel else {"val_accuracy": metric}))
            score = selection_score(val_loss, metric, multilabel)
        else:
            score = (epoch, 0.0)  # no validation data: keep the last epoch
        score = distributed.broadcast_object(score)  # every rank validates the same model; rank 0's score decides
        row["seconds"] = time.perf_counter() - t_epoch
        rows.append(row)
        improved = best is None or score > best
        if improved:
            best, best_epoch = score, epoch
            if multilabel and val_idx:
                thresholds = tune_thresholds(val_y, scores).tolist()
            config.update(best_epoch=epoch, **({"thresholds": thresholds} if thresholds else {}))
            if main:
                save_run(run, eval_model(), config)
                if val_idx:
                    write_validation(run, val_paths, labels, val_y, scores)
        print(f"epoch {epoch:3d}/{epochs}  train_loss {row['train_loss']:.4f}"
              + (f"  val_loss {row['val_loss']:.4f}  val_{'mAP' if multilabel else 'acc'} {metric:.4f}" if val_idx else "")
              + f"  lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *" if improved else ""), flush=True)
        if main:
            write_metrics(run, rows)
        decay = stop.after_epoch(step, epoch - best_epoch)
        if decay:
            print(decay)
        checkpoint(epoch, steps_per_epoch, True, (0.0, 0))
        if stop.finished(step):
            print(f"end: the decay finished at epoch {epoch}; best epoch {best_epoch}")
            break
    train_seconds = time.perf_counter() - t_start
    del step_model, loader  # the DDP wrapper holds the process group: gone before the group is (distributed.shutdown)
    report = {}
    if main:  # rank 0 tests the best checkpoint and writes the report; the others wait for it, then leave
        plot_curves(rows, run / "curves.png")
        validation = {k: v for r in rows if r["epoch"] == best_epoch for k, v in r.items() if k.startswith("val_")}
        report = test_best_checkpoint(run, device, d, clip_samples, thresholds, best_epoch, train_seconds, validation,
                                      started)
    distributed.shutdown()
    return report


def load_noise_bank(folder, sample_rate: int, clip_samples: int, cache: AudioCache, limit: int = 512,
                    max_samples: int = 16_000_000) -> torch.Tensor:
    """Background-noise clips ``(clips, clip_samples)`` from the audio files under ``folder``: each file cut into
    clip-length pieces (a shorter one zero-padded), so a few long recordings (Speech Commands' six minutes of
    ``_background_noise_``) give many clips; at most ``limit`` pieces and ``max_samples`` samples (64 MB), drawn
    at random."""
    from ..data.manifest import _audio_files
    paths = [str(p) for p in _audio_files(Path(folder))][:limit]
    clips, bad = cache.load(paths)
    if not clips:
        raise TrainError(f"--noise-dir {folder}: no decodable audio files")
    from ..data.clips import fit_length
    rng = np.random.default_rng(0)
    pieces = []
    for c in clips.values():
        k = len(c) // clip_samples
        pieces.extend(c[:k * clip_samples].reshape(k, clip_samples) if k else [fit_length(c, clip_samples, rng)])
    keep = min(limit, max(1, max_samples // clip_samples))
    if len(pieces) > keep:
        pieces = [pieces[i] for i in sorted(rng.choice(len(pieces), keep, replace=False))]
    return torch.from_numpy(np.stack(pieces).astype(np.float32, copy=False))
