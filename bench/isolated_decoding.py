"""What decoding in a worker process costs: ``DecoderPool.decode`` vs ``read_mono_limited`` in this process.

    python bench/isolated_decoding.py [--repeats 30]

Encodes FSDD audio as WebM/Opus (what the web page's recorder sends; only FFmpeg reads it), a short clip and a
long recording, then times each decode both ways, alternating, with a warm worker; prints medians, ranges and the
ratio, and the first call's cost (the worker's start-up). Then streams a long AAC recording (``--stream-minutes``)
in 60 s blocks both ways, as ``predict --window`` does.
"""
from __future__ import annotations

import argparse
import glob
import io
import time
from pathlib import Path

import numpy as np

from audioclf.audio import iter_blocks, read_audio, read_mono_limited
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
    ap.add_argument("--stream-minutes", type=float, default=10.0, help="length of the streamed recording")
    ap.add_argument("--stream-repeats", type=int, default=3)
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
    stream_case(long, args)


def stream_case(audio: np.ndarray, args) -> None:
    """``predict --window``'s path: a long AAC/MP4 recording streamed in 60 s blocks, here vs from a worker."""
    import tempfile

    import av

    minutes = args.stream_minutes
    x = np.tile(audio, int(minutes * 60 * RATE // len(audio)) + 1)[:int(minutes * 60 * RATE)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.m4a"
        with av.open(str(path), "w", format="ipod") as container:
            stream = container.add_stream("aac", rate=RATE, layout="mono")
            for start in range(0, len(x), RATE * 60):
                frame = av.AudioFrame.from_ndarray(x[None, start:start + RATE * 60], format="fltp", layout="mono")
                frame.sample_rate = RATE
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        size_mb = path.stat().st_size / 1e6
        block = args.sample_rate * 60
        pool = DecoderPool(workers=1)
        try:
            pool.decode(webm_opus(audio[:RATE]), args.sample_rate, None)  # start the worker: not timed
            times = {"this process": [], "worker process": []}
            for _ in range(args.stream_repeats):
                for way, blocks in (("this process", iter_blocks), ("worker process", pool.stream)):
                    t = time.perf_counter()
                    samples = sum(b.shape[1] for b in blocks(path, args.sample_rate, block))
                    times[way].append(time.perf_counter() - t)
        finally:
            pool.close()
    print(f"\na {minutes:g}-minute AAC recording ({size_mb:.1f} MB) streamed in 60 s blocks to {args.sample_rate} Hz "
          f"({samples} samples), best of {args.stream_repeats}:")
    for way, v in times.items():
        print(f"  {way:>15}: {min(v):.2f} s ({minutes * 60 / min(v):.0f}x real time)")
    print(f"  worker / this process: {min(times['worker process']) / min(times['this process']):.2f}x")


if __name__ == "__main__":
    main()
