"""HTTP serving benchmark: requests/s and latency of ``audioclf serve``, micro-batching on vs off.

    python bench/serving.py RUN [--requests 200] [--rounds 3] [--max-seconds 20] [--concurrency 1,8,32] [--threads N]
                               [--device cuda] [--amp] [--upload wav|flac]

Starts two servers on loopback (``--micro-batching`` and ``--no-micro-batching``, otherwise identical), then for
each concurrency level drives both in turn with minimal asyncio HTTP/1.1 clients (:class:`Connection`):
``concurrency`` clients each POST a real FSDD clip (raw body: 16-bit WAV, as FSDD publishes its recordings, or with
``--upload flac`` the bundle's FLAC), wait for the answer and send the next, until ``--requests`` answers or
``--max-seconds`` (after an unmeasured warm-up of 2 requests per client, which opens the connections). ``--rounds``
repeats every case, interleaving on/off, so slow drift in the machine's load affects both alike. Prints one table
(median req/s over the rounds and its range, pooled p50/p99 latency, mean forward batch from ``/v1/stats``) and the
on/off throughput ratio at the highest concurrency. The client shares the machine with the server, as a local
client would, so on a small machine its CPU use is part of what is measured.

Two reference figures bound what batching can give (both measured before the servers start, on the idle machine):

* the model alone: milliseconds a clip for a lone clip and for a cache-sized batch
  (:func:`audioclf.inference.inference_batch_size`), on one intra-op thread and on torch's default count, with
  the server's allocator settings (:mod:`audioclf.malloc`);
* the server floor: req/s at the highest concurrency of the same server with its forward pass replaced by constant
  logits (:func:`stub_app`): everything but the model -- HTTP, upload, decoding, queue, batching, answer.

Any failed request (an answer other than 200) makes the command exit with status 1: its figures would not be
requests served.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FSDD = sorted(glob.glob(str(ROOT / "datasets/fsdd/recordings/*.flac")))


def upload_body(path: str, upload: str) -> bytes:
    """A bundled FSDD clip as the client sends it: the FLAC file's bytes, or the same samples as 16-bit PCM WAV."""
    if upload == "flac":
        return Path(path).read_bytes()
    import io

    import soundfile as sf

    samples, rate = sf.read(path, dtype="int16")
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, micro_batching: bool | None, args) -> tuple[subprocess.Popen, str]:
    """``audioclf serve RUN`` on a free loopback port; ``micro_batching=None``: the stub server (:func:`stub_app`)."""
    port = free_port()
    if micro_batching is None:
        cmd = [sys.executable, __file__, run, "--stub-port", str(port)]
    else:
        cmd = [sys.executable, "-m", "audioclf", "serve", run, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--device", args.device, "--micro-batching" if micro_batching else "--no-micro-batching"]
        cmd += ["--amp"] if args.amp else []
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads:  # torch reads OMP_NUM_THREADS at start-up
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not start in 120 s")
        time.sleep(0.2)


class Connection:
    """A minimal keep-alive HTTP/1.1 client on one socket, so the load generator costs the shared CPUs as little
    as possible (an ``httpx`` client spends more CPU per request than the server does at high concurrency)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> "Connection":
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, host)

    @staticmethod
    def request(method: str, path: str, body: bytes = b"", content_type: str = "audio/wav") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        return (head + (f"Content-Type: {content_type}\r\n" if body else "") + "\r\n").encode() + body

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; returns (status, body). The server answers with a Content-Length."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(head[9:12]), await self.reader.readexactly(length)

    async def get_json(self, path: str) -> dict:
        status, body = await self.send(self.request("GET", path))
        return json.loads(body)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def drive(url: str, bodies: list[bytes], concurrency: int, requests: int, max_seconds: float,
                warmup: int | None = None) -> dict:
    """``concurrency`` closed-loop clients, each on its own keep-alive connection, each sending the next request
    when its answer is in; the first ``warmup`` answers (default 2 per client) are not measured. ``bodies``: WAV or
    FLAC files (the content type follows the first bytes)."""
    raws = [Connection.request("POST", "/v1/classify", body, "audio/flac" if body[:4] == b"fLaC" else "audio/wav")
            for body in bodies]
    conns = [await Connection.open(url) for _ in range(concurrency)]
    try:
        async def phase(n: int, seconds: float) -> tuple[list[float], int, float]:
            latencies, errors, sent = [], 0, 0
            start = time.perf_counter()
            stop_at = start + seconds

            async def worker(conn):
                nonlocal sent, errors
                while sent < n and time.perf_counter() < stop_at:
                    raw = raws[sent % len(raws)]
                    sent += 1
                    t = time.perf_counter()
                    status, _ = await conn.send(raw)
                    latencies.append(time.perf_counter() - t)
                    errors += status != 200

            await asyncio.gather(*(worker(c) for c in conns))
            return latencies, errors, time.perf_counter() - start

        await phase(2 * concurrency if warmup is None else warmup, max_seconds)
        before = await conns[0].get_json("/v1/stats")
        latencies, errors, wall = await phase(requests, max_seconds)
        after = await conns[0].get_json("/v1/stats")
    finally:
        for c in conns:
            await c.close()
    return {"latencies": latencies, "errors": errors, "wall": wall, "served": after["served"] - before["served"],
            "batches": after["batches"] - before["batches"]}


def run_async(coro):
    """``asyncio.run`` on uvloop when it is installed (it comes with ``uvicorn[standard]``), as the server uses."""
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def stub_app(run: str, args):
    """The server floor: the real app (upload, decoding, queue, batching, answer) with the model's forward pass
    replaced by constant logits, so its req/s is what the server can do when the model costs nothing."""
    from audioclf.serving import create_app

    app = create_app(run, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    classes = len(app.state.classifier.labels)
    app.state.batcher._logits = lambda stacked: np.zeros((len(stacked), classes), np.float32)
    return app


def model_costs(run: str, threads: list[int], device: str, amp: bool) -> list[tuple[int, int, float, float]]:
    """(threads, batch, ms a clip alone, ms a clip in the batch), batch = ``inference_batch_size``: medians over
    3 rounds that each time 30 calls of one size after 5 unmeasured ones, the sizes alternating. Each call is the
    server's model call (``Classifier.logits``): the batch to ``device``, the forward pass (bf16 autocast with
    ``amp``), the logits back (on a GPU that also waits for the kernels)."""
    import torch

    from audioclf.inference import inference_batch_size, load
    from audioclf.malloc import keep_activations_in_heap

    keep_activations_in_heap()  # as `audioclf serve` does
    clf = load(run, device, amp)
    batch = inference_batch_size(clf.model, clf.clip_samples, device, amp)
    x = (np.random.default_rng(0).standard_normal((batch, clf.clip_samples)) * 0.1).astype(np.float32)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        times = {1: [], batch: []}
        for _ in range(3):
            for size in times:
                for rep in range(35):
                    t = time.perf_counter()
                    clf.logits(x[:size])
                    if rep >= 5:
                        times[size].append((time.perf_counter() - t) / size * 1000)
        rows.append((n, batch, float(np.median(times[1])), float(np.median(times[batch]))))
    return rows


def summarise(runs: list[dict]) -> dict:
    """Pool the rounds of one case: median and range of req/s, pooled latency percentiles, mean batch."""
    rps = [len(r["latencies"]) / r["wall"] for r in runs]
    lat = np.concatenate([r["latencies"] for r in runs]) * 1000
    batches = sum(r["batches"] for r in runs)
    return {"n": len(lat), "rps": float(np.median(rps)), "rps_min": min(rps), "rps_max": max(rps),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": sum(r["errors"] for r in runs),
            "batch": sum(r["served"] for r in runs) / batches if batches else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a trained run folder (e.g. from `make demo`)")
    ap.add_argument("--requests", type=int, default=200, help="answers per case and round at most")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all cases; req/s is their median")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="seconds per case and round at most")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in the servers (default: torch's own choice). On a shared, busy "
                         "machine 1 avoids thread-pool stalls that swamp everything else")
    ap.add_argument("--device", default="cpu", help="the servers' --device (cpu, cuda)")
    ap.add_argument("--clips", type=int, default=64, help="distinct FSDD clips sent in turn")
    ap.add_argument("--amp", action="store_true", help="the servers' --amp (bf16 autocast), and the model alone's")
    ap.add_argument("--upload", choices=("wav", "flac"), default="wav",
                    help="what the clients send: 16-bit PCM WAV (FSDD's own format) or the bundle's FLAC")
    ap.add_argument("--stub-port", type=int, help=argparse.SUPPRESS)  # internal: run the stub server
    args = ap.parse_args()
    if args.stub_port:
        import uvicorn
        uvicorn.run(stub_app(args.run, args), host="127.0.0.1", port=args.stub_port, log_level="warning")
        return
    if not FSDD:
        raise SystemExit("no FSDD recordings under datasets/fsdd/recordings")
    bodies = [upload_body(p, args.upload) for p in FSDD[::max(1, len(FSDD) // args.clips)][:args.clips]]
    levels = [int(c) for c in args.concurrency.split(",")]
    import torch
    costs = model_costs(args.run, sorted({1, args.threads or torch.get_num_threads()}), args.device, args.amp)
    servers = {}
    try:
        proc, url = start_server(args.run, None, args)
        try:
            run_async(drive(url, bodies, 8, 40, 10, warmup=0))
            floor = [run_async(drive(url, bodies, max(levels), args.requests, args.max_seconds))
                     for _ in range(args.rounds)]
        finally:
            proc.terminate()
            proc.wait(10)
        for mode, on in (("on", True), ("off", False)):
            servers[mode] = start_server(args.run, on, args)
        for _, url in servers.values():  # warm-up: first calls allocate, fill caches
            run_async(drive(url, bodies, 8, 40, 10, warmup=0))
        results = {(mode, c): [] for c in levels for mode in ("on", "off")}
        for rnd in range(args.rounds):  # interleaved, alternating order: drifting machine load hits both alike
            for c in levels:
                for mode in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                    results[mode, c].append(run_async(drive(servers[mode][1], bodies, c, args.requests,
                                                              args.max_seconds)))
        rows = [(mode, c, summarise(results[mode, c])) for c in levels for mode in ("on", "off")]
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)

    print(f"\naudioclf serve, {Path(args.run).name}: FSDD clips ({np.mean([len(b) for b in bodies]) / 1024:.1f} KiB "
          f"{args.upload.upper()} each), {os.cpu_count()} CPUs, device {args.device}, torch threads {args.threads or 'default'}, max_batch {args.max_batch}, "
          f"max_wait_ms {args.max_wait_ms:g}, {'bf16 autocast' if args.amp else 'float32'}")
    print(f"{'micro-batching':>14} {'concurrency':>11} {'requests':>8} {'req/s':>8} {'(range)':>13} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'mean batch':>10} {'errors':>6}")
    for mode, c, r in rows:
        spread = f"{r['rps_min']:.0f}-{r['rps_max']:.0f}"
        print(f"{mode:>14} {c:>11} {r['n']:>8} {r['rps']:>8.1f} {spread:>13} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['batch']:>10.1f} {r['errors']:>6}")
    top = max(levels)
    stub = summarise(floor)
    print(f"\nserver floor (the same server, its forward pass replaced by constant logits) at concurrency {top}: "
          f"{stub['rps']:.0f} req/s ({stub['rps_min']:.0f}-{stub['rps_max']:.0f}), {stub['errors']} errors")
    for n, batch, alone, batched in costs:
        print(f"model alone, {n} intra-op thread{'s' if n > 1 else ''}: {alone:.2f} ms a lone clip, {batched:.2f} ms a "
              f"clip in a batch of {batch} ({alone / batched:.1f}x)")
    rps = {mode: r["rps"] for mode, c, r in rows if c == top}
    print(f"\nthroughput at concurrency {top}: micro-batching on / off = {rps['on'] / rps['off']:.2f}x "
          f"({rps['on']:.1f} vs {rps['off']:.1f} req/s)")
    failed = stub["errors"] + sum(r["errors"] for _, _, r in rows)
    if failed:
        raise SystemExit(f"{failed} requests failed: these figures are not valid")


if __name__ == "__main__":
    main()
