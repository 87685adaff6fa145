"""A run's set-up: the data (manifest, split, decoded clips), the batches, the model and its optimiser."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..augment import AugmentConfig, run_augmentations_eagerly
from ..data.cache import AudioCache
from ..data.clips import ClipDataset, fit_length
from ..data.duplicates import SUBSETS, digest, find_duplicates
from ..data.manifest import audio_files, load_manifest
from ..data.splits import (MIN_VALIDATION_CLIPS, MIN_VALIDATION_PER_CLASS, VALIDATION_SHARE, label_matrix, make_split,
                           validation_fraction)
from ..features import FrontendConfig
from ..models import create_model
from ..spec import clip_samples as samples_in
from . import autoconfig, distributed
from .config import TrainConfig, TrainError
from .ema import ModelEma
from .finetune import FINETUNE_LR, init_source
from .outputs import report_duplicates, report_skipped, write_skipped, write_split
from .samplers import EpochSampler, GroupBatchSampler
from .settings import DEFAULT_LR, resolve_settings, split_seed


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
    duplicates: dict  # Duplicates.counts() ({} with streamed shards)
    test_groups_heard: tuple[int, int]  # (test groups also in train, test groups): Split.test_groups_heard

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
    if init:
        follow_source(cfg, init, source, data)
    lr_reason = choose_lr(cfg, init)
    s = resolve_settings(cfg, manifest, len(split.train), resumed, validated=bool(split.val))
    if lr_reason:
        s["reasons"][f"lr={cfg.lr:g}"] = lr_reason
        print(f"auto: lr={cfg.lr:g}: {lr_reason}")
    if init:
        s["model_args"] = dict(init.config["model_args"])
    cache = AudioCache(cfg.cache_dir, s["sample_rate"])
    clips, bad = decode(cache, manifest, split, source)
    digests = {} if source else {path: digest(clip) for path, clip in clips.items()}  # streamed: not in memory
    skipped = manifest.skipped + bad
    if main:
        write_skipped(run, skipped)
        write_split(run, manifest, split, digests)
    report_skipped(skipped, run)
    keep = lambda idx: [i for i in idx if source or manifest.items[i].path in clips]  # noqa: E731
    train_idx, val_idx, test_idx = keep(split.train), keep(split.val), keep(split.test)
    print_split(split, (train_idx, val_idx, test_idx), labels, multilabel)
    duplicates = {}
    if digests:
        found = find_duplicates({subset: [manifest.items[i].path for i in idx] for subset, idx
                                 in zip(SUBSETS, (train_idx, val_idx, test_idx))}, digests,
                                {it.path: it.labels for it in manifest.items})
        report_duplicates(found, run, main)
        duplicates = found.counts()
    if not train_idx:
        raise TrainError(f"no usable training files in {data} ({len(skipped)} skipped, named above)")
    y = label_matrix(manifest, labels)
    s["reasons"].update(note_validation(cfg, len(split.train) + len(split.val), val_idx, y, labels))
    return TrainingData(manifest, source, cache, labels, multilabel, s, init, clips, skipped, train_idx,
                        val_idx, test_idx, y, duplicates, split.test_groups_heard)


def follow_source(cfg: TrainConfig, init, source, data) -> None:
    """A fine-tune keeps the ``--pretrained`` source's front end and architecture: its rate, model, mel bands, level
    normalisation (and clip length, where it keeps its window) go into ``cfg``."""
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


def choose_lr(cfg: TrainConfig, init) -> str | None:
    """Fill ``cfg.lr`` when it was not given: ``FINETUNE_LR`` fine-tuning, else ``DEFAULT_LR``; the reason, or None
    when the user set it."""
    reason = None if cfg.lr else (
        "fine-tuning: one peak rate for the new head and the pretrained backbone (a higher one unlearns the features)"
        if init else "from scratch: the peak rate of AdamW after the warm-up; the schedule decays it on the validation curve")
    cfg.lr = cfg.lr or (FINETUNE_LR if init else DEFAULT_LR)
    return reason


def decode(cache: AudioCache, manifest, split, source) -> tuple[dict, list]:
    """``(clips, bad)``: every file decoded into (or read from) the cache, rank 0 first; with tar shards only the
    validation and test clips (training is streamed)."""
    t0 = time.perf_counter()
    with distributed.main_first():  # rank 0 decodes into the cache; the others wait, then read it
        if source:
            clips, bad = source.load(manifest.items[i].path for i in split.val + split.test), []
        else:
            clips, bad = cache.load([it.path for it in manifest.items])
    print(f"audio: {len(clips)} clips decoded or read from {cache.dir} in {time.perf_counter() - t0:.1f} s")
    return clips, bad


def print_split(split, usable: tuple[list, list, list], labels: list[str], multilabel: bool) -> None:
    train, val, test = usable
    print(f"split: train {len(train)}, validation {len(val)}, test {len(test)} usable clips"
          + (f" ({split.declared})" if split.declared else "")
          + f"; {len(labels)} classes, {'multi' if multilabel else 'single'}-label"
          + ("; validation shares train's groups (the test fold does, or train has under 10 groups)"
             if split.val_shares_groups else ""))
    heard, groups = split.test_groups_heard
    if heard:
        print(f"note: {heard} of the test fold's {groups} groups are also in train: its score is on speakers or "
              "recordings training heard, not on new ones")


SMALL_VALIDATION = 50  # fewer validation clips (or under 3 of a class) cannot tell nearby epochs apart


def note_validation(cfg: TrainConfig, n_train: int, val_idx: list[int], y: np.ndarray,
                    labels: list[str] | None = None) -> dict:
    """Print the automatic validation share and its reason, and a note when validation is too small to choose an
    epoch by (or missing); returns ``{setting: reason}`` of the automatic share. ``n_train``: training and
    validation clips; ``y``: ``(clips, classes)`` labels; ``labels``: the class names."""
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
    counts = y[val_idx].sum(axis=0)
    missing = [labels[c] if labels else str(c) for c in np.flatnonzero(counts == 0)]
    if missing:
        print(f"note: validation holds no clip of {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
              f"(no held-out group has one): the best epoch and the start kept are chosen without "
              f"{'it' if len(missing) == 1 else 'them'}")
    fewest = int(counts[counts > 0].min(initial=len(val_idx)))
    if len(val_idx) < SMALL_VALIDATION or fewest < 3:
        print(f"note: validation holds {len(val_idx)} clips ({fewest} of its rarest class; one clip is "
              f"{100 / len(val_idx):.1f} accuracy points): too few to tell nearby epochs apart, so the best epoch "
              f"and the stop follow its loss and may be noisy; more data or a larger --val-fraction steady them")
    return reasons


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


@dataclass
class Net:
    """The model a run trains and what trains it."""

    model: torch.nn.Module
    step_model: torch.nn.Module  # the model as the training step calls it: compiled and/or DDP-wrapped
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    class_weights: torch.Tensor | None

    def evaluated(self) -> torch.nn.Module:
        """What validation, checkpoints and the test use: the EMA weights when there are any."""
        return self.ema.module if self.ema else self.model


def build_net(cfg: TrainConfig, d: TrainingData, augment: AugmentConfig, device: torch.device, world: int) -> Net:
    """The model (from the registry, or the ``--pretrained`` source's weights), its EMA, background noise,
    compilation, DDP wrapping, the AdamW optimiser and class-balanced loss weights."""
    s = d.settings
    frontend = (FrontendConfig(**d.init.config["frontend"]) if d.init
                else FrontendConfig(sample_rate=s["sample_rate"], n_mels=cfg.n_mels, level_norm=cfg.level_norm))
    model = create_model(s["model"], len(d.labels), frontend, augment, **s["model_args"])
    if d.init:
        d.init.apply(model, cfg.freeze_backbone)
    model.to(device, memory_format=torch.channels_last)  # faster conv training steps on CPU
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # before the noise: the EMA needs no copy
    if cfg.noise_dir:
        model.frontend.wave_augment.set_noise(load_noise_bank(cfg.noise_dir, s["sample_rate"], clip_samples(s),
                                                              d.cache))
    step_model = model
    if cfg.compile:
        run_augmentations_eagerly(model)
        step_model = torch.compile(model)
    if world > 1:  # gradients averaged across ranks; EMA, evaluation and checkpoints use the unwrapped `model`
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.backbone_lr_scale if d.init else 1.0),
                                  lr=cfg.lr)
    class_weights = None
    if s["balance"]:
        counts = d.y[d.train].sum(0)
        class_weights = torch.tensor(counts.sum() / (len(d.labels) * np.maximum(counts, 1)), dtype=torch.float32,
                                     device=device)
    return Net(model, step_model, ema, optimizer, class_weights)


def clip_samples(settings: dict) -> int:
    """Samples in one training window: ``clip_seconds`` at ``sample_rate``."""
    return samples_in(settings["clip_seconds"], settings["sample_rate"])


def load_noise_bank(folder, sample_rate: int, clip_samples: int, cache: AudioCache, limit: int = 512,
                    max_samples: int = 16_000_000) -> torch.Tensor:
    """Background-noise clips ``(clips, clip_samples)`` from the audio files under ``folder``: each file cut into
    clip-length pieces (a shorter one zero-padded), so a few long recordings (Speech Commands' six minutes of
    ``_background_noise_``) give many clips; at most ``limit`` pieces and ``max_samples`` samples (64 MB), drawn
    at random."""
    paths = [str(p) for p in audio_files(Path(folder))][:limit]
    clips, bad = cache.load(paths)
    if not clips:
        raise TrainError(f"--noise-dir {folder}: no decodable audio files")
    rng = np.random.default_rng(0)
    pieces = []
    for c in clips.values():
        k = len(c) // clip_samples
        pieces.extend(c[:k * clip_samples].reshape(k, clip_samples) if k else [fit_length(c, clip_samples, rng)])
    keep = min(limit, max(1, max_samples // clip_samples))
    if len(pieces) > keep:
        pieces = [pieces[i] for i in sorted(rng.choice(len(pieces), keep, replace=False))]
    return torch.from_numpy(np.stack(pieces).astype(np.float32, copy=False))
