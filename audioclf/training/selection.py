"""``audioclf train DATA`` with the model left to the data: train from scratch and fine-tune the bundled AudioSet
model, both on one split, and keep the fine-tuned one unless the one from scratch scores clearly higher on the
same validation clips.

Neither start wins everywhere: pretrained features carry environmental sound, music and mixtures; a model trained
from scratch can follow labels the pretraining did not care for (pitch, rate, loudness), so the data decide.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..checkpoint import read_config
from ..evaluation.evaluate import summary_line
from ..evaluation.metrics import mean_average_precision
from ..io_utils import write_json_atomic
from ..weights.catalogue import EFFICIENTAT_FRONTEND
from .config import SCRATCH, TrainConfig
from .validation import accuracy, paired_z, read_validation

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
    return [SCRATCH, DEFAULT_PRETRAINED], (f"from scratch and fine-tuning {DEFAULT_PRETRAINED}; the fine-tuned run is "
                                           "kept unless the one from scratch is clearly better on validation")


CLEAR_Z = 2.0  # a validation lead beyond this many standard errors (paired, over the same clips) decides


def keep(names: list[str], folders: list[Path], multilabel: bool) -> tuple[int, str]:
    """Which of the finished candidate runs to keep, and why. The pretrained start unless another scores clearly
    higher on the same validation clips (accuracy, or mAP for multi-label): by more than ``CLEAR_Z`` standard
    errors of the paired difference. Validation clips come from the training groups (speakers, recordings), where
    a model from scratch looks as good as it is; pretrained features also carry to groups it never heard."""
    metric, what = (mean_average_precision, "mAP") if multilabel else (accuracy, "accuracy")
    preferred = next((i for i, n in enumerate(names) if n != SCRATCH), 0)
    found = [read_validation(f) for f in folders]
    if found[preferred] is None:
        return preferred, f"{describe(names[preferred])} preferred: no per-clip validation scores to compare"
    paths, targets, base = found[preferred]
    best, best_z, told = preferred, CLEAR_Z, []
    for i, v in enumerate(found):
        if i == preferred or v is None or v[0] != paths:
            continue
        diff, z = paired_z(metric, targets, v[2], base)
        told.append(f"{describe(names[i])} {100 * diff:+.1f} points of {what} ({z:+.1f} standard errors)")
        if z > best_z:
            best, best_z = i, z
    n = len(paths)
    if best != preferred:
        return best, f"{'; '.join(told)} on {n} validation clips: a clear lead"
    return preferred, (f"{'; '.join(told) or 'no comparison'} on {n} validation clips: no clear lead over "
                       f"{describe(names[preferred])}, which is preferred (pretrained features carry to unheard groups)")


def describe(name: str) -> str:
    return "from scratch" if name == SCRATCH else f"fine-tuned {name}"


def train_candidates(data, out, cfg: TrainConfig, names: list[str]) -> dict:
    """Train each start into ``OUT/candidates/<scratch|name>`` (complete runs on one split), copy the files of the
    one with the better validation score into ``OUT``, and record the comparison in its ``config.json``
    (``candidates``, and the reason under ``training.reasons``). Returns the kept run's test report."""
    from .loop import train_run

    run = Path(out)
    settings = {**cfg.to_dict(), "overwrite": False}
    results = []
    for i, name in enumerate(names):
        folder = run / CANDIDATES_DIR / ("scratch" if name == SCRATCH else Path(name).name)
        print(f"=== candidate {i + 1}/{len(names)}: {describe(name)}", flush=True)
        report = train_run(data, folder, **{**settings, "pretrained": name})
        results.append((name, folder, read_config(folder), report))
    best, rule = keep([n for n, *_ in results], [f for _, f, *_ in results], results[0][2]["task"] == "multi_label")
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
