"""Small data sets: FSDD's official split trained on a random fraction of its training clips, automatic settings.

    python bench/small_data.py [--fractions 0.05,0.1] [--draws 0,1] [--epochs auto,50] [--out DIR]

For each fraction and draw, writes a CSV manifest (the 300 test clips of takes 0-4, a random ``fraction`` of the
other 2,700 as training data) and runs ``audioclf.train`` on it once per ``--epochs`` entry (``auto``: the
automatic choice, :func:`audioclf.training.autoconfig.choose_epochs`; a number: that many epochs). Prints one row
per run: training files, epochs, optimiser steps, test accuracy and training seconds. A user's first data set is
often a few hundred files; this is how the automatic settings do on one whose full-size answer is known (99.67%).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import random
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "datasets/fsdd"


def subset_manifest(rows: list[dict], path: Path, fraction: float, draw: int) -> int:
    """Write the subset of FSDD's manifest ``rows`` to ``path``; returns its number of training files."""
    train = [r for r in rows if r["fold"] != "0"]
    picked = random.Random(draw).sample(train, int(len(train) * fraction))
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label", "group", "fold"])
        for r, fold in [(r, "test") for r in rows if r["fold"] == "0"] + [(r, "train") for r in picked]:
            out.writerow([FSDD / r["path"], r["label"], r["group"], fold])
    return len(picked)


def main() -> None:
    import audioclf
    from audioclf.checkpoint import read_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.05,0.1", help="fractions of the 2,700 training clips")
    ap.add_argument("--draws", default="0,1", help="seeds of the random subsets")
    ap.add_argument("--epochs", default="auto,50", help="'auto' and/or epoch counts, one run each")
    ap.add_argument("--out", default=None, help="folder for the manifests and run folders (default: a temporary one)")
    args = ap.parse_args()
    with open(FSDD / "manifest.csv", newline="") as f:
        fsdd = list(csv.DictReader(f))
    with contextlib.ExitStack() as stack:
        out = Path(args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="audioclf-small-")))
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for fraction in (float(x) for x in args.fractions.split(",")):
            for draw in (int(x) for x in args.draws.split(",")):
                manifest = out / f"fsdd-{fraction:g}-{draw}.csv"
                files = subset_manifest(fsdd, manifest, fraction, draw)
                for epochs in args.epochs.split(","):
                    run = out / f"{manifest.stem}-{epochs}"
                    log = io.StringIO()
                    with contextlib.redirect_stdout(log):
                        report = audioclf.train(manifest, run, epochs=None if epochs == "auto" else int(epochs),
                                                overwrite=True)
                    config = read_config(run)
                    train, settings = config["split_sizes"]["train"], config["training"]
                    steps = settings["epochs"] * (train // settings["batch_size"])  # the loader drops a partial batch
                    rows.append((fraction, draw, train, epochs, settings["epochs"], steps, report["accuracy"],
                                 config["metrics"]["train_seconds"]))
                    print(f"fraction {fraction:g}, draw {draw}: {files} files picked, epochs {epochs}: "
                          f"{report['accuracy']:.2%}", flush=True)
    print(f"\n{'fraction':>8} {'draw':>4} {'train':>5} {'epochs':>11} {'steps':>5} {'test acc':>8} {'train s':>7}")
    for fraction, draw, train, asked, epochs, steps, acc, seconds in rows:
        print(f"{fraction:>8g} {draw:>4} {train:>5} {asked + ' -> ' + str(epochs):>11} {steps:>5} {acc:>8.2%} "
              f"{seconds:>7.1f}")


if __name__ == "__main__":
    main()
