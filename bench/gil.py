"""What a batched forward pass costs when another thread of the same process runs Python: the server's situation.

    python bench/gil.py RUN [--windows 16] [--repeats 30]

A model thread beside the server's event loop (HTTP, upload, decoding, answers) would share one GIL with it. PyTorch
releases the GIL inside each operator but takes it back between them, so while the event loop runs pure Python the
model waits for its turn at every operator. This is one reason the server runs its forward passes on the event loop
itself (``audioclf/serving/app.py``). On one intra-op thread this prints the median time of a forward pass over
``--windows`` windows:

* alone;
* while a second thread runs pure Python, at the default GIL switch interval (5 ms) and at 0.2 ms;
* while a second thread decodes FLAC clips (libsndfile releases the GIL), as the event loop partly does.

It also prints the model's arithmetic rate in that pass (``audioclf.models.summary.forward_gflops``) next to a
square fp32 matmul's on the same thread, the ceiling for what batching can gain.

Last, the other reason the server has no model thread: a lone clip on torch's default intra-op thread count, on this
thread, before and after one forward pass has run in another thread that stays alive, as a model thread would.
That pass leaves a second OpenMP team behind; with more OpenMP threads than cores libgomp stops spinning between
parallel regions, and the first thread's passes slow down while the other thread lives.
"""
from __future__ import annotations

import argparse
import glob
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from pipeline import timed  # bench/pipeline.py: median and spread of timed runs

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    return timed(fn, repeats)[0] * 1000


def model_call(model, batch: torch.Tensor):
    """A forward pass over ``batch`` ``(windows, samples)`` as a function of no arguments, for timing."""
    def call():
        with torch.inference_mode():
            model(batch)
    return call


def with_busy_thread(work, measure):
    """``measure()`` while another thread repeats ``work()``."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        return measure()
    finally:
        stop.set()
        thread.join()


def pure_python():
    total = 0
    for i in range(2000):
        total += i * i
    return total


def after_another_threads_pass(forward, repeats: int) -> tuple[float, float]:
    """Median ms of ``forward()`` on this thread, then again after one ``forward()`` ran in another thread that is
    still alive (as a model thread would be: a thread's OpenMP team lives as long as the thread)."""
    before = median_ms(forward, repeats)
    with ThreadPoolExecutor(1) as other:
        other.submit(forward).result()
        return before, median_ms(forward, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a trained run folder (e.g. from `make demo`)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from audioclf.audio import read_mono_limited
    from audioclf.inference import load
    from audioclf.malloc import keep_activations_in_heap
    from audioclf.models.summary import forward_gflops

    keep_activations_in_heap()  # as `audioclf serve` does
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clf = load(args.run, "cpu")
    x = torch.randn(args.windows, clf.clip_samples) * 0.1
    clips = [Path(p).read_bytes() for p in sorted(glob.glob(str(ROOT / "datasets/fsdd/recordings/*.flac")))[:50]]
    if not clips:
        raise SystemExit("no FSDD recordings under datasets/fsdd/recordings")

    forward = model_call(clf.model, x)
    def decode():
        for data in clips:
            read_mono_limited(data, clf.sample_rate, 600)

    measure = lambda: median_ms(forward, args.repeats)  # noqa: E731
    alone = measure()
    busy = with_busy_thread(pure_python, measure)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        busy_short = with_busy_thread(pure_python, measure)
    finally:
        sys.setswitchinterval(interval)
    decoding = with_busy_thread(decode, measure)

    print(f"\n{Path(args.run).name}: forward pass over {args.windows} windows, one intra-op thread, median of "
          f"{args.repeats}")
    print(f"  alone:                                          {alone:8.2f} ms")
    print(f"  another thread runs pure Python (5 ms switch):  {busy:8.2f} ms ({busy / alone:.1f}x)")
    print(f"  the same at a 0.2 ms switch interval:           {busy_short:8.2f} ms ({busy_short / alone:.1f}x)")
    print(f"  another thread decodes FLAC clips:              {decoding:8.2f} ms ({decoding / alone:.1f}x)")

    gflop = forward_gflops(clf.model, clf.sample_rate, clf.clip_samples / clf.sample_rate) * args.windows
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = median_ms(lambda: a @ b, 10)
    print(f"\nmodel: {gflop / alone * 1000:.0f} GFLOP/s in that pass alone; 2048x2048 fp32 matmul: "
          f"{2 * 2048 ** 3 / 1e9 / matmul * 1000:.0f} GFLOP/s (one thread)")

    torch.set_num_threads(default_threads)
    lone = model_call(clf.model, torch.randn(1, clf.clip_samples) * 0.1)
    before, after = after_another_threads_pass(lone, args.repeats * 10)
    print(f"\na lone clip on {default_threads} intra-op threads, on this thread: {before:.2f} ms; after one pass in "
          f"another thread: {after:.2f} ms ({after / before:.1f}x)")


if __name__ == "__main__":
    main()
