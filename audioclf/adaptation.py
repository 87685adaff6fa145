"""Unsupervised adaptation to a new recording domain: batch-norm statistics re-estimated from unlabelled audio.

Every batch norm of a trained model normalises with the feature means and variances of its training recordings.
Audio from another microphone, room or voice shifts those statistics; re-estimating them from a few unlabelled
clips of the new domain (AdaBN, Li et al. 2016) recovers much of the accuracy the shift costs. The weights stay as
trained; only the batch norms' running means and variances change, so an adapted run exports and serves like any
other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.windows import fit_length, window_starts
from .settings import CACHE_HELP, DEVICE_HELP, check_fields, option

ADAPT_MAX_WINDOWS = 4096  # bounds the time on hours of audio
ADAPT_BATCH = 64  # windows per forward pass, so each batch's statistics are well estimated
# The trained statistics weigh as much as this many windows of the new audio (Schneider et al. 2020): a few clips
# give noisy estimates.
ADAPT_PRIOR_WINDOWS = 4.0


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch norms that keep running statistics (the front end's per-mel norm first)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def check_adaptable(model: nn.Module) -> None:
    """Refuse a model with no batch norm after its front end (``ast_tiny`` normalises with layer norms): adapting
    the front end's per-mel statistics alone feeds the layers after it inputs unlike those they were trained on."""
    front = set(batchnorm_layers(model.frontend)) if hasattr(model, "frontend") else set()
    if not set(batchnorm_layers(model)) - front:
        raise ValueError(f"model {getattr(model, 'model_name', type(model).__name__)!r} has no batch norm after its "
                         "front end: adapting the front end's statistics alone makes it worse, so it cannot be adapted")


def sample_windows(clips, clip_samples: int, max_windows: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(clip index, start sample)`` of up to ``max_windows`` of the half-overlapping windows inference uses,
    drawn at random across all clips and shuffled, so each batch mixes recordings."""
    positions = [(i, s) for i, clip in enumerate(clips) for s in window_starts(len(clip), clip_samples)]
    order = np.random.default_rng(seed).permutation(len(positions))[:max_windows]
    return [positions[j] for j in order]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, clips, clip_samples: int, max_windows: int = ADAPT_MAX_WINDOWS,
                    batch_size: int = ADAPT_BATCH, seed: int = 0, device: str | torch.device = "cpu",
                    prior_windows: float = ADAPT_PRIOR_WINDOWS) -> int:
    """Move every batch norm's running mean and variance to those of ``clips`` (float32 ``(samples,)`` at the
    model's rate, labels not needed), in place; returns the number ``w`` of windows used.

    Windows are drawn by :func:`sample_windows` and split into equal batches; each batch norm averages the
    statistics of its batches (``momentum=None``), with the batch norms alone in training mode, so augmentation
    stays off and each layer sees its input normalised by the new statistics of the layers before it. The result
    is ``(w * new + prior_windows * trained) / (w + prior_windows)`` (0: the new statistics alone). The model is left
    in eval mode; on an error it keeps its previous statistics.
    """
    if max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, not {max_windows}")
    check_adaptable(model)
    layers = batchnorm_layers(model)
    picks = sample_windows(clips, clip_samples, max_windows, seed)
    if not picks:
        raise ValueError("no audio to adapt to")
    model.eval()
    saved = [(layer.momentum, {k: v.clone() for k, v in layer.state_dict().items()}) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches
        layer.train()
    try:
        for batch in np.array_split(np.asarray(picks), max(1, round(len(picks) / batch_size))):
            # the window at each start; a clip shorter than a window is centred in zeros, as in inference
            waves = np.stack([fit_length(clips[i][s:s + clip_samples], clip_samples) for i, s in batch])
            model(torch.from_numpy(waves).to(device))
        weight = len(picks) / (len(picks) + prior_windows)
        for layer, (_, trained) in zip(layers, saved):
            for name in ("running_mean", "running_var"):
                getattr(layer, name).mul_(weight).add_(trained[name], alpha=1 - weight)
    except BaseException:
        for layer, (_, state) in zip(layers, saved):
            layer.load_state_dict(state)
        raise
    finally:
        for layer, (momentum, _) in zip(layers, saved):
            layer.momentum = momentum
            layer.eval()
    return len(picks)


@dataclass
class AdaptConfig:
    """``audioclf adapt`` / :func:`adapt_run` settings."""

    max_windows: int | None = option(None, "windows drawn at random from the audio at most (default: "
                                           "ADAPT_MAX_WINDOWS, 4096)", min=1)
    seed: int = option(0, "random seed of the windows drawn")
    overwrite: bool = option(False, "replace the run already in --out")
    cache_dir: str | None = option(None, CACHE_HELP)
    device: str = option("cpu", DEVICE_HELP)


def adapt_run(run, paths, out, **settings) -> dict:
    """Adapt the run folder ``run`` to the audio files ``paths`` (at most ``max_windows`` windows, default
    ``ADAPT_MAX_WINDOWS``) and save the result as the run folder ``out`` (``run`` is left as it is; ``out`` new or
    empty, or a run replaced with ``overwrite``). Files that fail to decode are skipped and listed. Returns the
    ``adaptation`` record stored in ``out/config.json``. ``settings``: :class:`AdaptConfig` fields."""
    cfg = AdaptConfig(**settings)
    check_fields(cfg)
    max_windows, cache_dir, device, seed, overwrite = cfg.max_windows, cfg.cache_dir, cfg.device, cfg.seed, cfg.overwrite
    from .checkpoint import save_run
    from .data.cache import AudioCache
    from .inference import load

    if Path(out).resolve() == Path(run).resolve():
        raise ValueError(f"--out {out} is the source run: write the adapted run to another folder")
    max_windows = ADAPT_MAX_WINDOWS if max_windows is None else max_windows
    if max_windows < 1:  # before any decoding
        raise ValueError(f"max_windows must be at least 1, not {max_windows}")
    from .run_folder import claimed
    with claimed(out, overwrite=overwrite):
        clf = load(run, device, fold_batchnorm=False)  # the batch norms are what adapts
        check_adaptable(clf.model)  # before any decoding
        clips, bad = AudioCache(cache_dir, clf.sample_rate).load([str(p) for p in paths])
        for path, reason in bad:
            print(f"skipped {path}: {reason}")
        if not clips:
            raise ValueError(f"no decodable audio among the {len(paths)} file(s) given: nothing to adapt to")
        windows = adapt_batchnorm(clf.model, list(clips.values()), clf.clip_samples, max_windows, seed=seed,
                                  device=device)
        record = {"source_run": str(run), "files": len(clips), "skipped_files": len(bad), "windows": windows,
                  "batchnorm_layers": len(batchnorm_layers(clf.model)), "seed": seed}
        config = dict(clf.config)
        if "metrics" in config:  # the source run's test figures do not describe the adapted model
            record["source_metrics"] = config.pop("metrics")
        save_run(out, clf.model, {**config, "adaptation": record})
        return record


def adapted_test_report(run, items, adapt_clips: int, cache_dir=None, seed: int = 0, device: str = "cpu") -> dict:
    """Adaptation measured on a run's test data (``audioclf cv --adapt N``): ``adapt_clips`` test clips drawn at
    random (their labels unused) adapt the batch norms, and the other test clips are scored before and after.

    ``items``: the test :class:`~audioclf.data.manifest.Item` s, one domain (a held-out speaker, device or site).
    Returns the adapted model's report on the clips not used for adaptation, with ``<metric>_before`` (the same
    clips, unadapted), ``adapt_clips`` and ``adapt_paths``.
    """
    from .data.cache import AudioCache
    from .data.manifest import Manifest
    from .data.splits import label_matrix
    from .evaluation.evaluate import build_report
    from .inference import load, scores_from_logits

    clf = load(run, device, fold_batchnorm=False)  # the batch norms are what adapts
    clips, _ = AudioCache(cache_dir, clf.sample_rate).load([it.path for it in items])
    items = [it for it in items if it.path in clips]
    if len(items) <= adapt_clips:
        raise ValueError(f"--adapt {adapt_clips}: the test data of {run} has only {len(items)} clip(s); adapting "
                         "needs more, so that some are left to score")
    order = np.random.default_rng(seed).permutation(len(items))
    adapt, scored = [items[i] for i in order[:adapt_clips]], [items[i] for i in sorted(order[adapt_clips:])]
    targets = label_matrix(Manifest(scored, Path(".")), clf.labels)

    def report() -> dict:
        logits = clf.clip_logits([clips[it.path] for it in scored])
        return build_report(scores_from_logits(logits, clf.multilabel), targets, clf.labels, clf.multilabel,
                            clf.thresholds)

    before = report()
    adapt_batchnorm(clf.model, [clips[it.path] for it in adapt], clf.clip_samples, seed=seed, device=device)
    after = report()
    metrics = ("mAP", "macro_f1", "micro_f1") if clf.multilabel else ("accuracy", "macro_f1")
    return {**after, **{f"{k}_before": before[k] for k in metrics}, "adapt_clips": adapt_clips,
            "adapt_paths": [it.path for it in adapt]}
