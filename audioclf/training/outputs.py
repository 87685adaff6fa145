"""The files a run writes besides its checkpoint: skipped files, the split, per-epoch metrics, progress lines and
the test report."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_run
from ..data.duplicates import COLUMNS
from ..evaluation.evaluate import build_report, summary_line, write_report
from ..inference import clip_logits, scores_from_logits
from ..io_utils import write_json_atomic, write_text_atomic


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


def report_duplicates(found, run: Path, main: bool) -> None:
    """A note for held-out clips that copy training clips and for identical clips under different labels
    (:class:`~audioclf.data.duplicates.Duplicates`); every pair in ``duplicates.csv`` (written by rank 0)."""
    n = found.counts()
    if not found.copies and not found.conflicts:
        return
    if main:
        buf = io.StringIO()
        csv.writer(buf).writerows([COLUMNS, *found.rows()])
        write_text_atomic(run / "duplicates.csv", buf.getvalue())
    if found.copies:
        print(f"note: {n['test']} test and {n['validation']} validation clip(s) are copies of training clips "
              "(identical audio): their scores measure memory, not new recordings (pairs in "
              f"{run / 'duplicates.csv'})")
    if found.conflicts:
        print(f"note: {n['label_conflicts']} pair(s) of identical clips carry different labels (in "
              f"{run / 'duplicates.csv'})")


SPLIT_NAME = "split.csv"  # every item the run was split from: evaluate knows the clips (and the audio) it saw


def write_split(run: Path, manifest, split, digests: dict[str, bytes]) -> None:
    """``path,subset,audio_sha256`` of each item (the digest of its decoded audio, empty when not decoded here)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "subset", "audio_sha256"])
    for subset, idx in (("train", split.train), ("validation", split.val), ("test", split.test)):
        writer.writerows((manifest.items[i].path, subset, digests.get(manifest.items[i].path, b"").hex())
                         for i in idx)
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


def test_best_checkpoint(run: Path, device, d, clip_samples: int, thresholds, best_epoch: int,
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
