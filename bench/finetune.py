"""Fine-tuning from AudioSet weights against training from scratch, side by side in one run.

    python bench/finetune.py [--sets env,fsdd,fsdd-loso] [--configs default,scratch,mn04_as] [--out DIR] [--csv FILE]

Sets: ``env``, the five-fold environmental-sound set of ``bench/envsounds.py`` (400 five-second clips from real drum
kits and Sonic Pi's samples, kits held out; built into OUT/env when missing); ``fsdd``, FSDD's official split
(takes 0-4 tested); ``fsdd-loso``, FSDD leave one speaker out (six folds). Configurations: ``default``, ``audioclf train`` /
``cv`` with no flags (from scratch and fine-tuned, the better on validation kept); ``scratch``, with ``--pretrained
off``; ``mn04_as``, with ``--pretrained mn04_as``; ``mn04_as-probe``, with ``--freeze-backbone`` too. Prints one row per set and configuration: accuracy (mean +- std over folds),
macro-F1, the training loops' seconds, and the process CPU seconds and wall seconds of the whole command (decoding
and testing included); with ``--csv`` the rows are appended there as well.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

from results_csv import append_rows, machine_name

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "datasets/fsdd"
CONFIGS = {"default": {}, "scratch": {"pretrained": "off"}, "mn04_as": {"pretrained": "mn04_as"},
           "mn04_as-probe": {"pretrained": "mn04_as", "freeze_backbone": True}}


def run_set(name: str, settings: dict, out: Path) -> dict:
    """Train / cross-validate one set with ``settings``; accuracy and macro-F1 (mean, std) and training seconds."""
    from audioclf.training.crossval import cross_validate
    from audioclf.training import train

    if name == "fsdd":
        report = train(FSDD / "manifest.csv", out, test_fold="0", overwrite=True, **settings)
        seconds = json.loads((out / "config.json").read_text())["metrics"]["train_seconds"]
        return {"accuracy": report["accuracy"], "std": 0.0, "macro_f1": report["macro_f1"], "folds": 1,
                "train_seconds": seconds}
    if name == "fsdd-loso":
        data, extra = FSDD / "recordings", {"pattern": r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.flac", "folds": 6}
    else:
        data, extra = env_manifest(out.parent), {}
    cv = cross_validate(data, out, overwrite=True, **extra, **settings)
    seconds = sum(json.loads((out / f"fold-{r['fold']}" / "config.json").read_text())["metrics"]["train_seconds"]
                  for r in cv["folds"])
    return {"accuracy": cv["mean_accuracy"], "std": cv["std_accuracy"], "macro_f1": cv["mean_macro_f1"],
            "folds": cv["n_folds"], "train_seconds": seconds}


def env_manifest(out: Path) -> Path:
    manifest = out / "env" / "manifest.csv"
    if not manifest.is_file():
        import envsounds
        envsounds.build(out / "env", 50, 5.0, 0)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="env,fsdd,fsdd-loso")
    ap.add_argument("--configs", default="scratch,mn04_as")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-finetune"))
    ap.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV file")
    args = ap.parse_args()
    rows = []
    for name in args.sets.split(","):
        for config in args.configs.split(","):
            out = args.out / f"{name}-{config}"
            t0, c0 = time.perf_counter(), time.process_time()
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                result = run_set(name, dict(CONFIGS[config]), out)
            (args.out / f"{name}-{config}.log").write_text(log.getvalue())
            row = {"set": name, "config": config, **result, "cpu_seconds": time.process_time() - c0,
                   "wall_seconds": time.perf_counter() - t0, "machine": machine_name()}
            rows.append(row)
            print(f"{name:<10} {config:<14} accuracy {row['accuracy']:.2%} +- {row['std']:.2%}  macro-F1 "
                  f"{row['macro_f1']:.4f}  train {row['train_seconds']:.0f} s  CPU {row['cpu_seconds']:.0f} s  "
                  f"wall {row['wall_seconds']:.0f} s", flush=True)
    if args.csv:
        append_rows(args.csv, rows)


if __name__ == "__main__":
    main()
