"""Scaling benchmarks on the bundled FSDD, CPU: 1 vs 2 DDP processes, tar-shard streaming vs the in-memory cache.

    .venv/bin/python bench/scale.py [--speakers 3] [--epochs 2] [--batch-size 32]

Training clips/s = training clips x epochs / the run's train_seconds (no validation: --val-fraction 0).
Each process gets OMP_NUM_THREADS = cores / processes, so 1 and 2 processes use the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "datasets" / "fsdd" / "recordings"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def subset_csv(folder: Path, speakers: int) -> Path:
    rows = ["path,label,group,fold"]
    for speaker in SPEAKERS[:speakers]:
        for digit in range(10):
            for take in range(50):
                rows.append(f"{FSDD / f'{digit}_{speaker}_{take}.flac'},{digit},{speaker},{'test' if take < 5 else 'train'}")
    csv = folder / "subset.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def train_rate(data, out: Path, cache: Path, nproc: int, args) -> float:
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "audioclf", "train", str(data), "--out", str(out), "--test-fold", "test",
           "--val-fraction", "0", "--epochs", str(args.epochs), "--model", "cnn", "--width", "0.5",
           "--batch-size", str(args.batch_size), "--clip-seconds", "1", "--sample-rate", "8000",
           "--cache-dir", str(cache), "--checkpoint-every", "0", "--nproc", str(nproc), "--overwrite"]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    config = json.loads((out / "config.json").read_text())
    return config["split_sizes"]["train"] * args.epochs / config["metrics"]["train_seconds"]


def iterate_rate(dataset, batch_size: int, repeats: int = 2) -> float:
    n, t0 = 0, time.perf_counter()
    for epoch in range(repeats):
        dataset.set_epoch(epoch)
        for wave, _ in DataLoader(dataset, batch_size=batch_size):
            n += len(wave)
    return n / (time.perf_counter() - t0)


def measure(speakers: int = 3, epochs: int = 2, batch_size: int = 32, threads: int = 0) -> dict:
    """Clips/s of: training with 1 and 2 DDP processes (cache), iterating the training data from the cache and
    from tar shards, and training from tar shards (1 process)."""
    sys.path.insert(0, str(ROOT))
    from audioclf.data.cache import AudioCache
    from audioclf.data.clips import ClipDataset
    from audioclf.data.manifest import load_manifest
    from audioclf.data.shards import ShardSource, StreamingClipDataset, pack
    from audioclf.data.splits import label_matrix

    args = argparse.Namespace(speakers=speakers, epochs=epochs, batch_size=batch_size, threads=threads)
    tmp = Path(tempfile.mkdtemp(prefix="audioclf-scale-"))
    csv, cache = subset_csv(tmp, speakers), tmp / "cache"
    manifest = load_manifest(csv)
    clips, _ = AudioCache(cache, 8000).load([it.path for it in manifest.items])  # decode once, outside the timings
    shards = tmp / "shards"
    pack(csv, shards, shard_size=250, sample_rate=8000, cache_dir=str(cache))
    rates = {"train_1proc": train_rate(csv, tmp / "p1", cache, 1, args),
             "train_2proc": train_rate(csv, tmp / "p2", cache, 2, args)}
    data = ClipDataset([clips[it.path] for it in manifest.items], label_matrix(manifest), 8000, train=True)
    source = ShardSource(shards)
    keys = [it.path for it in source.manifest().items]
    targets = dict(zip(keys, label_matrix(source.manifest())))
    stream = StreamingClipDataset(source.urls, targets, 8000, shuffle_buffer=1000)
    rates["read_cache"] = iterate_rate(data, batch_size)
    rates["read_shards"] = iterate_rate(stream, batch_size)
    pattern = shards / ("shard-{000000..%06d}.tar" % (len(source.urls) - 1))
    rates["train_shards"] = train_rate(pattern, tmp / "s1", cache, 1, args)
    rates["clips"] = len(manifest.items)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speakers", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="OMP threads per process (default: cores / processes)")
    args = p.parse_args()
    r = measure(args.speakers, args.epochs, args.batch_size, args.threads)
    print(f"\nFSDD {args.speakers} speakers ({r['clips']} clips), cnn width 0.5, 1 s at 8 kHz, global batch "
          f"{args.batch_size}, {args.epochs} epochs, {os.cpu_count()} cores, "
          f"{args.threads or 'cores / processes'} thread(s) per process")
    print(f"{'what':<42} {'clips/s':>10}")
    for name, key in (("train, 1 process (cache)", "train_1proc"), ("train, 2 DDP processes (cache)", "train_2proc"),
                      ("iterate training data, in-memory cache", "read_cache"),
                      ("iterate training data, tar shards", "read_shards"), ("train, 1 process (tar shards)", "train_shards")):
        print(f"{name:<42} {r[key]:>10.0f}")
    print(f"2 vs 1 process speed-up: {r['train_2proc'] / r['train_1proc']:.2f}x")


if __name__ == "__main__":
    main()
