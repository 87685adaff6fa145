"""Cross-validation folds one after another against ``--jobs N`` folds side by side, in one run.

    python bench/cv_jobs.py [--jobs 2] [--epochs 5] [--model cnn] [--out DIR]

Runs ``audioclf.training.crossval.cross_validate`` twice on FSDD leave-one-speaker-out (6 folds, the speaker as the
group, seed 0): with ``jobs=1`` (one fold at a time on all of this process's threads) and with ``jobs=N`` (N worker
processes with 1/N of the threads each). Prints the wall time and mean accuracy of each and the speed-up. The cv
output goes to ``OUT/jobs-K.log``. ``--epochs auto`` trains the automatic number of epochs (28 on FSDD); the
default of 5 keeps the bench to a few minutes, with the same per-step work.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.flac"


def main() -> None:
    import torch

    from audioclf.malloc import keep_activations_in_heap
    from audioclf.training.crossval import cross_validate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="folds side by side in the second run")
    ap.add_argument("--epochs", default="5", help="epochs per fold, or 'auto'")
    ap.add_argument("--model", default=None, help="a registered model (default: chosen from the data)")
    ap.add_argument("--out", default=None, help="folder for the cv runs and logs (default: a temporary one)")
    args = ap.parse_args()
    keep_activations_in_heap()  # as the audioclf command does
    settings = {"pattern": FSDD_PATTERN, "seed": 0, "model": args.model,
                "epochs": None if args.epochs == "auto" else int(args.epochs)}
    rows = []
    with contextlib.ExitStack() as stack:
        out = Path(args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="audioclf-cv-jobs-")))
        out.mkdir(parents=True, exist_ok=True)
        for jobs in (1, args.jobs):
            with open(out / f"jobs-{jobs}.log", "w") as log, contextlib.redirect_stdout(log):
                start = time.perf_counter()
                cv = cross_validate(ROOT / "datasets/fsdd/recordings", out / f"jobs-{jobs}", folds=6, jobs=jobs,
                                    overwrite=True, **settings)
                rows.append((jobs, time.perf_counter() - start, cv["mean_accuracy"], cv["std_accuracy"]))
    print(f"FSDD leave-one-speaker-out, 6 folds, epochs {args.epochs}, {torch.get_num_threads()} threads in all")
    print(f"{'folds at a time':>16} {'wall s':>8} {'mean accuracy':>14}")
    for jobs, seconds, mean, std in rows:
        print(f"{jobs:>16} {seconds:>8.1f} {100 * mean:>9.2f} +- {100 * std:.1f}")
    print(f"speed-up of --jobs {args.jobs}: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
