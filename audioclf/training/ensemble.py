"""``audioclf train --ensemble K [--model a,b]``: K runs that differ in their training seed (and, given several model
names, in architecture: member k trains name k mod n), kept as one model."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..checkpoint import load_run, read_config, save_run
from ..evaluation.metrics import tune_thresholds
from ..inference import clip_logits, scores_from_logits
from ..models.ensemble import Ensemble
from ..spec import RunSpec
from .config import TrainConfig, TrainError

MEMBER_SEED_STEP = 1000  # member k trains with seed + 1000 k: far from the seeds a user runs side by side


def train_ensemble(data, out, cfg: TrainConfig) -> dict:
    """Train ``cfg.ensemble`` members into ``OUT/member-1`` ... (complete runs with their own reports), all on the
    split of ``--split-seed`` (default ``--seed``), then save their :class:`Ensemble` as the run in ``OUT`` and test
    it there (``report.json``). Multi-label thresholds are tuned again on the ensemble's validation scores."""
    from ..devices import resolve_device
    from .loop import train_run
    from .outputs import test_best_checkpoint
    from .settings import split_seed
    from .setup import prepare_data

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or cfg.nproc > 1:
        raise TrainError("--ensemble trains its members one after another in one process: leave out --nproc, or "
                         "train data-parallel members as separate runs")
    run, k, names = Path(out), cfg.ensemble, cfg.model_names()
    member_settings = {**cfg.to_dict(), "ensemble": 1, "split_seed": split_seed(cfg)}
    seeds = [cfg.seed + MEMBER_SEED_STEP * i for i in range(k)]
    models = [names[i % len(names)] if names else None for i in range(k)]  # None: chosen from the data
    members = [run / f"member-{i + 1}" for i in range(k)]
    reports = []
    for i, (seed, model, member) in enumerate(zip(seeds, models, members)):
        print(f"=== ensemble member {i + 1}/{k}: {model or 'model chosen from the data'}, seed {seed}, split seed "
              f"{member_settings['split_seed']}", flush=True)
        reports.append(train_run(data, member, **{**member_settings, "seed": seed, "model": model}))
    member_configs = [read_config(m) for m in members]

    print(f"=== ensemble of {k}: testing the mean of the members' logits", flush=True)
    first = member_configs[0]
    settings = {**member_settings, **{key: first["training"][key] for key in ("sample_rate", "clip_seconds")}}
    d = prepare_data(TrainConfig(**settings), data, run, True)  # the members' split; clips from the cache
    device = resolve_device(cfg.device)
    model = Ensemble([load_run(m, device)[0] for m in members])
    clip_samples = RunSpec.from_config(first).clip_samples
    thresholds = None
    if d.multilabel and d.val:
        scores = scores_from_logits(clip_logits(model, d.audio(d.val), clip_samples, device=device), True)
        thresholds = tune_thresholds(d.y[d.val], scores).tolist()
    config = {key: v for key, v in first.items() if key not in ("metrics", "best_epoch", "thresholds")}
    config["training"] = {**first["training"], "seed": cfg.seed, "ensemble": k,
                          **({"model": cfg.model} if names else {})}  # the names given, not the first member's
    config["ensemble_members"] = [
        {"run": m.name, "model": c["model"], "seed": seed, "epochs": c["training"]["epochs"],
         "best_epoch": c["best_epoch"],
         **{f"test_{key}": r[key] for key in ("accuracy", "macro_f1", "mAP") if key in r}}
        for m, seed, c, r in zip(members, seeds, member_configs, reports)]
    save_run(run, model, {**config, **({"thresholds": thresholds} if thresholds else {})})
    seconds = sum(c["metrics"]["train_seconds"] for c in member_configs)  # the members' training loops
    report = test_best_checkpoint(run, device, d, clip_samples, thresholds,
                                  [m["best_epoch"] for m in config["ensemble_members"]], seconds)
    key = "mAP" if d.multilabel else "accuracy"
    if report and all(key in r for r in reports):
        member_scores = [r[key] for r in reports]
        print(f"ensemble test {key} {report[key]:.4f}; members {', '.join(f'{x:.4f}' for x in member_scores)} "
              f"(mean {np.mean(member_scores):.4f})")
    return report
