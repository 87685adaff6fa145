"""``audioclf train DATA`` with the model left to the data: train from scratch and fine-tune the bundled AudioSet
model (with its augmentation and without), all on one split, and keep the run that scores higher on groups
(speakers, recordings) none heard, the fine-tune without augmentation only on a clear lead: on validation, which
holds groups out when train has ten or more; with two to nine, on a selection hold-out of whole training groups,
after which the kept run trains again on all of them. Where the comparison can only use clips of the training groups
(no groups named, or a test split that shares them), the fine-tuned run with augmentation is kept unless another
leads clearly: there a model from scratch looks better than it carries to new recordings.

Neither start wins everywhere: pretrained features carry environmental sound, music and mixtures; a model trained
from scratch can follow labels the pretraining did not care for (pitch, rate, loudness), and augmentation can blur
the cue a label lives in, so the data decide.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import read_config
from ..data.manifest import LABEL_SEPARATOR, load_manifest
from ..data.splits import group_holdout, make_split
from ..evaluation.evaluate import summary_line
from ..evaluation.metrics import mean_average_precision
from ..io_utils import write_json_atomic, write_text_atomic
from ..run_folder import CANDIDATES_DIR, LOCK_NAME, SELECTION_DIR
from ..weights.catalogue import EFFICIENTAT_FRONTEND
from .config import SCRATCH, TrainConfig
from .settings import split_seed
from .validation import accuracy, paired_z, read_validation

DEFAULT_PRETRAINED = "mn04_as"  # bundled with the package: no download


@dataclass(frozen=True)
class Start:
    """One candidate run: the ``--pretrained`` value it starts from (:data:`SCRATCH`: from scratch) and whether it
    trains with the default augmentation."""

    pretrained: str
    augment: bool = True

    @property
    def folder(self) -> str:
        """Its folder name under ``candidates/`` or ``selection/``: ``scratch``, ``mn04_as``, ``mn04_as-no-augment``."""
        name = "scratch" if self.pretrained == SCRATCH else Path(self.pretrained).name
        return name if self.augment else f"{name}-no-augment"

    @property
    def key(self) -> str:
        """The choice as ``config.json`` reasons name it: ``pretrained=mn04_as`` (``augment=off`` added without)."""
        return f"pretrained={self.pretrained}" + ("" if self.augment else " augment=off")

    def describe(self) -> str:
        start = "from scratch" if self.pretrained == SCRATCH else f"fine-tuned {self.pretrained}"
        return start + ("" if self.augment else " without augmentation")

    def settings(self) -> dict:
        """The training settings it fixes."""
        return {"pretrained": self.pretrained, **({} if self.augment else {"augment": False})}


def candidates(cfg: TrainConfig, data, out) -> tuple[list[Start], str]:
    """The runs to train and why: from scratch, fine-tuned and (when the augmentation is left to the default)
    fine-tuned without augmentation, unless a setting fixes the start (``--pretrained``, ``--model``, ``--width``, a
    ``--sample-rate`` the pretrained model does not take, ``--ensemble``, ``--nproc``, no validation clips, tar
    shards at another rate, ``--resume`` of a single run): then that one alone."""
    from ..data.shards import ShardSource, is_shard_source

    if cfg.pretrained:
        return [Start(cfg.pretrained)], "--pretrained given"
    if cfg.resume and (Path(out) / "state").is_dir() and not (Path(out) / CANDIDATES_DIR).is_dir():
        return [Start(SCRATCH)], f"from scratch: --resume continues the single run in {Path(out) / 'state'} as it began"
    rate = EFFICIENTAT_FRONTEND["sample_rate"]
    fixed = [("--model", cfg.model), ("--width", cfg.width is not None),
             ("--sample-rate", cfg.sample_rate not in (None, rate)), ("--ensemble", cfg.ensemble > 1),
             ("--nproc", cfg.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1),
             ("--val-fraction 0", cfg.val_fraction == 0)]
    given = [flag for flag, on in fixed if on]
    if not given and is_shard_source(data) and ShardSource(data).sample_rate != rate:
        given = [f"tar shards not at {rate} Hz"]
    if given:
        return [Start(SCRATCH)], f"from scratch: {', '.join(given)} {'fix' if len(given) > 1 else 'fixes'} the model"
    starts = [Start(SCRATCH), Start(DEFAULT_PRETRAINED)]
    if cfg.augment and not cfg.aug:  # a short run: whether its augmentation blurs the labels' cue is measured
        starts.append(Start(DEFAULT_PRETRAINED, augment=False))
        return starts, (f"from scratch, and fine-tuning {DEFAULT_PRETRAINED} with its augmentation and without; the "
                        "one kept is chosen by their validation scores (augmentation is dropped only on a clear lead, "
                        "the fine-tuned run is kept on a tie)")
    return starts, (f"from scratch and fine-tuning {DEFAULT_PRETRAINED}; the one kept is chosen by their validation "
                    "scores (the fine-tuned one on a tie)")


CLEAR_Z = 2.0  # a lead on clips of the training groups beyond this many standard errors (paired) decides


def keep(starts: list[Start], folders: list[Path], multilabel: bool, held_out: bool,
         clips: str = "validation clips") -> tuple[int, str]:
    """Which of the finished candidate runs to keep, and why, from their scores on the same validation clips
    (accuracy, or mAP for multi-label), paired clip by clip. The preferred run is the first fine-tuned one with
    augmentation. The same start without augmentation replaces it only on a lead of more than ``CLEAR_Z`` standard
    errors: augmentation is kept unless the clips show it hurts. Then the run from scratch against the one kept so
    far: on clips of groups the runs never heard (``held_out``) the higher score wins, the fine-tuned run on a tie;
    on clips of the training groups, or of data that name no groups, a model from scratch looks better than it
    carries to new ones, so it must lead by more than ``CLEAR_Z`` standard errors. ``clips``: what the clips are,
    in the reason."""
    metric, what = (mean_average_precision, "mAP") if multilabel else (accuracy, "accuracy")
    preferred = next((i for i, s in enumerate(starts) if s.pretrained != SCRATCH and s.augment), 0)
    found = [read_validation(f) for f in folders]
    if found[preferred] is None:
        return preferred, f"{starts[preferred].describe()} preferred: no per-clip validation scores to compare"
    paths, targets, _ = found[preferred]

    @functools.cache
    def versus(i: int, j: int) -> tuple[float, float]:
        """Run ``i``'s lead over run ``j`` and its z (a bootstrap: computed once a pair)."""
        return paired_z(metric, targets, found[i][2], found[j][2])

    def told(i: int, j: int) -> str:
        diff, z = versus(i, j)
        over = "" if j == preferred else f" over {starts[j].describe()}"
        return f"{starts[i].describe()} {100 * diff:+.1f} points of {what} ({z:+.1f} standard errors{over})"
    rivals = [i for i, v in enumerate(found) if i != preferred and v is not None and v[0] == paths]
    lines, kept, verdicts = [told(i, preferred) for i in rivals], preferred, []
    for i in (i for i in rivals if starts[i].pretrained == starts[preferred].pretrained):  # the same, unaugmented
        clear = versus(i, kept)[1] > CLEAR_Z
        verdicts.append(f"{'a' if clear else 'no'} clear lead without augmentation")
        kept = i if clear else kept
    for i in (i for i in rivals if starts[i].pretrained != starts[preferred].pretrained):  # from scratch
        if kept != preferred:
            lines.append(told(i, kept))
        diff, z = versus(i, kept)
        name = starts[kept].describe()
        if held_out:
            won = diff > 0
            verdicts.append("from scratch the higher score on unheard groups" if won else
                            f"a tie, where {name} is preferred" if diff == 0 else f"{name} scores higher")
        else:
            won = z > CLEAR_Z
            verdicts.append("a clear lead from scratch" if won else
                            f"no clear lead over {name}, which is preferred (these clips come from the training "
                            "groups, where pretrained features carry further than they show)")
        kept = i if won else kept
    lines = f"{'; '.join(lines) or 'no comparison'} on {len(paths)} {clips}"
    return kept, f"{lines}: {'; '.join(verdicts) or starts[kept].describe() + ' preferred'}"


@dataclass
class Comparison:
    """Where the starts are compared: the run's validation clips, or a selection hold-out (``manifest``)."""

    held_out: bool  # the compared clips come from groups the compared runs never heard
    manifest: Path | None = None  # RUN/selection/manifest.csv: the training clips, the held-out groups its validation
    where: str = ""  # what the selection hold-out holds, in words
    noise_dir: str | None = None  # the data set's own noise folder, which a CSV manifest does not carry

    @property
    def clips(self) -> str:
        return "clips of the held-out groups" if self.manifest else "validation clips"


def plan_comparison(cfg: TrainConfig, data, run: Path) -> Comparison:
    """Where to compare the starts. On the validation clips, held out by group when the data name groups and train
    holds enough; with two to nine training groups (:func:`~audioclf.data.splits.group_holdout`), on a selection
    hold-out written to ``RUN/selection/manifest.csv``: the training clips, the held-out groups its ``validation``
    fold."""
    from ..data.shards import is_shard_source

    if is_shard_source(data):
        return Comparison(False)
    manifest = load_manifest(data, cfg.pattern).require_classes()
    split = make_split(manifest, cfg.test_fold, cfg.test_fraction, cfg.val_fraction, split_seed(cfg))
    group = lambda idx: {manifest.items[i].group for i in idx} - {None}  # noqa: E731
    parts = group_holdout(manifest, split, split_seed(cfg))
    if parts is None or any(LABEL_SEPARATOR in label for label in manifest.labels):  # a CSV cell could not hold it
        return Comparison(bool(group(split.val)) and not group(split.val) & group(split.train))
    rest, held = parts
    items = manifest.items
    rows = [[items[i].path, LABEL_SEPARATOR.join(items[i].labels), items[i].group or "", fold]
            for idx, fold in ((rest, "train"), (held, "validation")) for i in idx]
    buf = io.StringIO()
    csv.writer(buf).writerows([["path", "label", "group", "fold"], *rows])
    (run / SELECTION_DIR).mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / SELECTION_DIR / "manifest.csv", buf.getvalue())
    where = (f"{len(group(held))} of the {len(group(rest + held))} training groups held out "
             f"({', '.join(sorted(group(held)))}; {len(held)} clips)")
    return Comparison(True, run / SELECTION_DIR / "manifest.csv", where, manifest.noise_dir)


def candidate_settings(cfg: TrainConfig) -> dict:
    """The settings each candidate trains with: the run's, each into a new folder of its own (the run's
    ``--overwrite`` applies to the run folder, which :func:`~audioclf.run_folder.claim` emptied)."""
    return {**cfg.to_dict(), "overwrite": False}


def train_each(data, folder: Path, settings: dict, starts: list[Start]) -> list[tuple]:
    """Train each start into ``folder/<start.folder>``; ``(start, run folder, config, test report)`` of each."""
    from .loop import train_run

    results = []
    for i, start in enumerate(starts):
        run = folder / start.folder
        print(f"=== candidate {i + 1}/{len(starts)}: {start.describe()}", flush=True)
        report = train_run(data, run, **{**settings, **start.settings()})
        results.append((start, run, read_config(run), report))
    return results


def compare_starts(data, run: Path, cfg: TrainConfig, starts: list[Start]) -> tuple[list[tuple], int, str, Comparison]:
    """Train the starts where :func:`plan_comparison` says and pick one: ``(results of train_each, the kept index,
    why, the comparison)``."""
    settings = candidate_settings(cfg)
    compared = plan_comparison(cfg, data, run)
    if compared.manifest:
        print(f"selection: {compared.where}: the starts train on the other groups and are compared on these; the "
              "one kept then trains on every training group", flush=True)
        selection = {**settings, "pattern": None, "test_fold": None, "test_fraction": 0.0,
                     "noise_dir": cfg.noise_dir or compared.noise_dir}
        results = train_each(compared.manifest, run / SELECTION_DIR, selection, starts)
    else:
        results = train_each(data, run / CANDIDATES_DIR, settings, starts)
    best, rule = keep([s for s, *_ in results], [f for _, f, *_ in results], results[0][2]["task"] == "multi_label",
                      compared.held_out, compared.clips)
    told = "; ".join(f"{s.describe()} " + ", ".join(f"{k[4:]} {v:.4f}" for k, v in c["metrics"].items()
                                                     if k.startswith("val_")) for s, _, c, _ in results)
    where = f"selection ({compared.where})" if compared.manifest else "validation"
    return results, best, f"{where} {told}: {rule}", compared


def train_candidates(data, out, cfg: TrainConfig, starts: list[Start]) -> dict:
    """Train each start, keep one (:func:`keep`) and make its files the run's, with the comparison in its
    ``config.json`` (``candidates``, ``selection``, the reason under ``training.reasons``). The starts are complete
    runs on one split in ``OUT/candidates/<start.folder>``; with a selection hold-out (:func:`plan_comparison`)
    they train in ``OUT/selection/`` without the held-out groups, are compared on them, and the kept start trains
    again on every training group into ``OUT/candidates/<start.folder>``. Returns the kept run's test report."""
    from .loop import train_run

    run = Path(out)
    results, best, why, compared = compare_starts(data, run, cfg, starts)
    start = results[best][0]
    print(f"auto: {start.key}: {why}", flush=True)
    if compared.manifest:
        print(f"=== the kept start, {start.describe()}, on every training group", flush=True)
        folder = run / CANDIDATES_DIR / start.folder
        report = train_run(data, folder, **{**candidate_settings(cfg), **start.settings()})
        config = read_config(folder)
    else:
        _, folder, config, report = results[best]
    for f in folder.iterdir():  # the kept run's files; its training state stays in its own folder
        if f.is_file() and f.suffix != ".log" and f.name != LOCK_NAME:
            shutil.copy2(f, run / f.name)
    config["training"]["reasons"] = {**config["training"].get("reasons", {}), start.key: why}
    config["candidates"] = [{"pretrained": s.pretrained, "augment": c["training"]["augment"],  # as it trained
                             "run": str(f.relative_to(run)), "model": c["model"], "kept": s == start, **c["metrics"]}
                            for s, f, c, _ in results]
    if compared.manifest:
        config["selection"] = {"held_out": compared.where, "manifest": str(compared.manifest.relative_to(run)),
                               "kept_run": str(folder.relative_to(run))}
    write_json_atomic(run / "config.json", config)
    print((f"kept {start.describe()}: test {summary_line(report)}\n" if report else f"kept {start.describe()}\n")
          + f"run folder: {run}  (report: {run / 'report.json'}; the starts compared in "
          + f"{run / (SELECTION_DIR if compared.manifest else CANDIDATES_DIR)})")
    return report
