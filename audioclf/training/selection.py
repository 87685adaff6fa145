"""``audioclf train DATA`` with the model left to the data: train from scratch and fine-tune the bundled AudioSet
model, both on one split, and keep the one that scores better on the validation clips.

Neither start wins everywhere: pretrained features carry environmental sound, music and mixtures; a model trained
from scratch follows labels the pretraining did not care for (pitch, rate, loudness), so the data decide.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from ..checkpoint import read_config
from ..evaluation.evaluate import summary_line
from ..io_utils import write_json_atomic
from ..weights.catalogue import EFFICIENTAT_FRONTEND
from .config import SCRATCH, TrainConfig

DEFAULT_PRETRAINED = "mn04_as"  # bundled with the package: no download
CANDIDATES_DIR = "candidates"


def candidates(cfg: TrainConfig, data, out) -> tuple[list[str], str]:
    """The ``--pretrained`` values to train (:data:`SCRATCH` and/or a source) and why: both starts unless a setting
    fixes one (``--pretrained``, ``--model``, ``--width``, a ``--sample-rate`` the pretrained model does not take,
    ``--ensemble``, ``--nproc``, no validation clips, tar shards at another rate, ``--resume`` of a single run)."""
    from ..data.shards import ShardSource, is_shard_source

    if cfg.pretrained:
        return [cfg.pretrained], "--pretrained given"
    if cfg.resume and (Path(out) / "state").is_dir() and not (Path(out) / CANDIDATES_DIR).is_dir():
        return [SCRATCH], f"from scratch: --resume continues the single run in {Path(out) / 'state'} as it began"
    rate = EFFICIENTAT_FRONTEND["sample_rate"]
    fixed = [("--model", cfg.model), ("--width", cfg.width is not None),
             ("--sample-rate", cfg.sample_rate not in (None, rate)), ("--ensemble", cfg.ensemble > 1),
             ("--nproc", cfg.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1),
             ("--val-fraction 0", cfg.val_fraction == 0)]
    given = [flag for flag, on in fixed if on]
    if not given and is_shard_source(data) and ShardSource(data).sample_rate != rate:
        given = [f"tar shards not at {rate} Hz"]
    if given:
        return [SCRATCH], f"from scratch: {', '.join(given)} {'fix' if len(given) > 1 else 'fixes'} the model"
    return [SCRATCH, DEFAULT_PRETRAINED], (f"from scratch and fine-tuning {DEFAULT_PRETRAINED}; the better on "
                                           "validation is kept")


def selection_score(val_loss: float, metric: float, multilabel: bool) -> tuple[float, float]:
    """What "best epoch" maximises (compared as a tuple). Single-label: the validation cross-entropy first, accuracy
    breaking ties. Accuracy moves in steps of one clip and saturates on a small validation set, so ranking by it
    first kept a lucky early epoch (FSDD leave-one-speaker-out, seed 1: epoch 7 of 28 at 99.6% validation
    accuracy, then an early stop; 76.0% test vs 84.0% when ranked by loss). Multi-label: mAP first (threshold-free
    and already continuous), the loss breaking ties."""
    return (metric, -val_loss) if multilabel else (-val_loss, metric)


CLEAR_SE = 2.0  # an accuracy lead beyond this many standard errors decides; a smaller one is noise


def keep(runs: list[dict], n_val: int) -> tuple[int, str]:
    """Which of several finished runs to keep, from their ``metrics`` (best epoch's ``val_*``), and why.
    Multi-label: the higher validation mAP. Single-label: the higher validation accuracy when it leads every other
    by more than ``CLEAR_SE`` standard errors of the difference on ``n_val`` clips; otherwise the lower validation
    loss among the runs within that margin (the loss is continuous; a few clips either way are not)."""
    if any("val_mAP" in m for m in runs):
        best = max(range(len(runs)), key=lambda i: (runs[i].get("val_mAP", -math.inf), -runs[i].get("val_loss", math.inf)))
        return best, "the higher mAP"
    acc = [m.get("val_accuracy", -math.inf) for m in runs]
    top = max(range(len(runs)), key=lambda i: acc[i])
    n = max(1, n_val)

    def margin(i):  # CLEAR_SE standard errors of the difference between run i's accuracy and the top one's
        p, q = min(max(acc[i], 0.0), 1.0), acc[top]
        return CLEAR_SE * max(math.sqrt((p * (1 - p) + q * (1 - q)) / n), 1 / n)
    close = [i for i in range(len(runs)) if acc[top] - acc[i] <= margin(i)]
    if len(close) == 1:
        return top, f"the higher accuracy, by more than {CLEAR_SE:g} standard errors on {n_val} clips"
    best = min(close, key=lambda i: runs[i].get("val_loss", math.inf))
    return best, (f"accuracies within {CLEAR_SE:g} standard errors of each other on {n_val} clips, so the lower loss "
                  "decides")


def describe(name: str) -> str:
    return "from scratch" if name == SCRATCH else f"fine-tuned {name}"


def train_candidates(data, out, cfg: TrainConfig, names: list[str]) -> dict:
    """Train each start into ``OUT/candidates/<scratch|name>`` (complete runs on one split), copy the files of the
    one with the better validation score into ``OUT``, and record the comparison in its ``config.json``
    (``candidates``, and the reason under ``training.reasons``). Returns the kept run's test report."""
    from .trainer import train

    run = Path(out)
    settings = {**cfg.to_dict(), "overwrite": False}
    results = []
    for i, name in enumerate(names):
        folder = run / CANDIDATES_DIR / ("scratch" if name == SCRATCH else Path(name).name)
        print(f"=== candidate {i + 1}/{len(names)}: {describe(name)}", flush=True)
        report = train(data, folder, **{**settings, "pretrained": name})
        results.append((name, folder, read_config(folder), report))
    best, rule = keep([c["metrics"] for _, _, c, _ in results], results[0][2]["split_sizes"]["val"])
    name, folder, config, report = results[best]
    told = "; ".join(f"{describe(n)} " + ", ".join(f"{k[4:]} {v:.4f}" for k, v in c["metrics"].items() if k.startswith("val_"))
                     for n, _, c, _ in results)
    why = f"validation {told}: {rule}"
    print(f"auto: pretrained={name}: {why}", flush=True)
    for f in folder.iterdir():  # the kept run's files; its training state stays in its own folder
        if f.is_file() and f.suffix != ".log":
            shutil.copy2(f, run / f.name)
    config["training"]["reasons"] = {**config["training"].get("reasons", {}), f"pretrained={name}": why}
    config["candidates"] = [{"pretrained": n, "run": str(f.relative_to(run)), "model": c["model"],
                             "kept": n == name, **c["metrics"]} for n, f, c, _ in results]
    write_json_atomic(run / "config.json", config)
    print((f"kept {describe(name)}: test {summary_line(report)}\n" if report else f"kept {describe(name)}\n")
          + f"run folder: {run}  (report: {run / 'report.json'}; both candidates in {run / CANDIDATES_DIR})")
    return report
