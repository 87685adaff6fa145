"""Peak memory of filling the decode cache: what a first ``audioclf train`` on a large data set costs before training.

    python bench/cache_memory.py [--files 1500] [--seconds 10] [--rate 16000]

Writes ``--files`` WAV files of ``--seconds`` of noise at 44.1 kHz (a temporary folder), then, in a fresh process
each, decodes them into an empty cache at ``--rate`` (``AudioCache.load``, resampling included) and prints the
decoded size, the process's peak RSS, the peak RSS minus that of a process that only imported the package, and
the decoding speed. A second load from the filled cache (memory maps, nothing decoded) is timed too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

NATIVE_RATE = 44100

CHILD = r"""
import json, resource, sys, time
from audioclf.data.cache import AudioCache
paths, cache_dir, rate, decode = json.loads(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
clips, bad = AudioCache(cache_dir, rate).load(paths) if decode else ({}, [])
seconds = time.perf_counter() - t
samples = sum(len(c) for c in clips.values())
print(json.dumps({"base_mb": base, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": seconds, "decoded_mb": samples * 4 / 2**20, "files": len(clips), "bad": len(bad)}))
"""


def measure(paths: list[str], cache_dir: str, rate: int, decode: bool = True) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([paths, cache_dir, rate, decode])],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=16000, help="the cache's sample rate")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        audio_dir, cache_dir = Path(tmp) / "audio", Path(tmp) / "cache"
        audio_dir.mkdir()
        n = int(args.seconds * NATIVE_RATE)
        paths = []
        for i in range(args.files):
            path = audio_dir / f"clip{i:06d}.wav"
            sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), NATIVE_RATE, subtype="PCM_16")
            paths.append(str(path))
        idle = measure([], str(cache_dir), args.rate, decode=False)
        first = measure(paths, str(cache_dir), args.rate)
        again = measure(paths, str(cache_dir), args.rate)
    hours = args.files * args.seconds / 3600
    print(f"{args.files} files x {args.seconds:g} s ({hours:.2f} h) at {NATIVE_RATE} Hz -> cache at {args.rate} Hz: "
          f"{first['decoded_mb']:.0f} MB decoded ({first['bad']} bad)")
    print(f"process after import:           peak RSS {idle['peak_mb']:7.0f} MB")
    print(f"first load (decode + write):    peak RSS {first['peak_mb']:7.0f} MB  "
          f"(+{first['peak_mb'] - idle['peak_mb']:.0f} MB = {(first['peak_mb'] - idle['peak_mb']) / first['decoded_mb']:.2f}x "
          f"the decoded size)  {first['seconds']:.1f} s, {first['files'] / first['seconds']:.0f} files/s")
    print(f"second load (memory maps):      peak RSS {again['peak_mb']:7.0f} MB  {again['seconds']:.2f} s")


if __name__ == "__main__":
    main()
