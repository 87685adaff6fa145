"""What decoding in a worker process costs: ``DecoderPool.decode`` vs ``read_mono_limited`` in this process.

    python bench/isolated_decoding.py [--repeats 30]

Encodes FSDD audio as WebM/Opus (what the web page's recorder sends; only FFmpeg reads it), a short clip and a
long recording, then times each decode both ways, alternating, with a warm worker; prints medians, ranges and the
ratio, and the first call's cost (the worker's start-up).
"""
from __future__ import annotations

import argparse
import glob
import io
import time
from pathlib import Path

import numpy as np

from audioclf.audio import read_audio, read_mono_limited
from audioclf.isolated_decoding import DecoderPool

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000  # Opus' rate


def webm_opus(audio: np.ndarray) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sample-rate", type=int, default=16000, help="rate decoded to")
    args = ap.parse_args()
    clips = sorted(glob.glob(str(ROOT / "datasets/fsdd/recordings/*.flac")))
    if not clips:
        raise SystemExit("no FSDD recordings under datasets/fsdd/recordings")
    short = read_audio(clips[5], RATE)[0]
    long = np.concatenate([read_audio(c, RATE)[0] for c in clips[:150]])
    print(f"WebM/Opus decoded to mono {args.sample_rate} Hz; medians (range) over {args.repeats} calls each")
    for name, audio in (("one clip", short), ("a recording", long)):
        body = webm_opus(audio)
        pool = DecoderPool(workers=1)
        try:
            t = time.perf_counter()
            pool.decode(body, args.sample_rate, None)
            first = time.perf_counter() - t
            times = {"this process": [], "worker process": []}
            for _ in range(args.repeats):
                for way, decode in (("this process", read_mono_limited), ("worker process", pool.decode)):
                    t = time.perf_counter()
                    decode(body, args.sample_rate, None)
                    times[way].append((time.perf_counter() - t) * 1000)
        finally:
            pool.close()
        med = {way: float(np.median(v)) for way, v in times.items()}
        print(f"\n{name}: {len(audio) / RATE:.1f} s, {len(body) / 1024:.0f} KiB")
        for way, v in times.items():
            print(f"  {way:>15}: {med[way]:8.2f} ms ({min(v):.2f}-{max(v):.2f})")
        print(f"  worker / this process: {med['worker process'] / med['this process']:.2f}x "
              f"(+{med['worker process'] - med['this process']:.2f} ms); first call, starting the worker: "
              f"{first * 1000:.0f} ms")


if __name__ == "__main__":
    main()
