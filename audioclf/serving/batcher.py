"""Micro-batching: decoded clips queue up, and one worker task runs a forward pass over every window of a batch
of them on the event loop, then resolves each request.

The worker takes what is queued and waits for requests still being received or decoded to join (up to
``max_batch``) until the oldest one has been queued for ``max_wait_ms``, so under load nothing waits, and a lone
request pays no batching delay. Forward passes run on the event loop's thread in model calls of at most
:func:`audioclf.inference.inference_batch_size` windows, with the loop free between calls: a separate model thread
would contend with the loop for the GIL and leave a second OpenMP team behind (``bench/gil.py``).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..data.windows import window_starts, windows
from .errors import ApiError

log = logging.getLogger("audioclf.serving")


@dataclass
class _Item:
    clip: np.ndarray
    future: asyncio.Future
    windows: bool  # also return per-window scores (long audio)
    queued_at: float = 0.0  # event-loop time it was queued


@dataclass
class _Result:
    scores: np.ndarray  # (classes,) whole clip
    times: np.ndarray | None = None  # (windows, 2) seconds
    window_scores: np.ndarray | None = None  # (windows, classes)


@dataclass
class Batcher:
    """The request queue and its worker task (bound to the running event loop, restarted if the loop changes)."""

    classifier: object
    max_batch: int = 32
    max_wait_ms: float = 10.0
    queue_size: int = 256
    micro_batching: bool = True
    batch_sizes: Counter = field(default_factory=Counter)
    incoming: int = 0  # requests received but not yet queued (body upload, decoding)
    served: int = 0

    def __post_init__(self):
        from ..inference import inference_batch_size

        clf = self.classifier
        # windows per model call at most
        self._cap = inference_batch_size(clf.model, clf.clip_samples, clf.device, clf.amp)
        self._loop = self._queue = self._task = None
        self._arrived: asyncio.Event | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker on ``loop``, the running loop (looked up when None), unless it runs there already."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._queue, self._arrived = loop, asyncio.Queue(self.queue_size), asyncio.Event()
        self._task = loop.create_task(self._run(), name="audioclf-batcher")

    async def stop(self) -> None:
        task, queue = self._task, self._queue
        if self._loop is not asyncio.get_running_loop():
            return  # started in another (finished) event loop: nothing to stop here
        self._task = self._loop = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while queue is not None and not queue.empty():
            item = queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ApiError(503, "overloaded", "the server is shutting down"))

    def announce(self) -> None:
        """A request has started arriving: the worker may wait (up to max_wait_ms) for it to join a batch."""
        self.incoming += 1

    def withdraw(self) -> None:
        self.incoming -= 1
        if self._arrived is not None:
            self._arrived.set()

    async def submit(self, clip: np.ndarray, with_windows: bool) -> _Result:
        """Queue one decoded clip (the caller has called :meth:`announce`); raises ApiError 503 when full."""
        loop = asyncio.get_running_loop()
        self.start(loop)
        item = _Item(clip, loop.create_future(), with_windows, loop.time())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise ApiError(503, "overloaded", f"the request queue is full ({self.queue_size} waiting); retry "
                                              "later", {"Retry-After": "1"}) from None
        finally:
            self.withdraw()
        return await item.future

    async def _run(self) -> None:
        loop, queue = asyncio.get_running_loop(), self._queue
        while True:
            batch = [await queue.get()]
            if self.micro_batching:
                # max_wait_ms counts from when the oldest request was queued, not from now: one that already
                # waited through the previous forward pass goes at once, so a loaded model never idles
                deadline = batch[0].queued_at + self.max_wait_ms / 1000
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if self.incoming <= 0 or remaining <= 0:
                        break
                    self._arrived.clear()
                    try:  # woken by a new item or by a request that gave up before queueing
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
            batch = [item for item in batch if not item.future.done()]  # clients gone
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                results = await self._forward(batch)
            except Exception as e:  # noqa: BLE001 -- every waiting request gets the error
                log.exception("forward pass failed")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self.served += len(batch)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _logits(self, stacked: np.ndarray) -> np.ndarray:
        """One model call: logits ``(windows, classes)`` for float32 windows ``(windows, clip_samples)``. The model is
        in eval mode since ``load`` built it; nothing here switches it."""
        return self.classifier.logits(stacked)

    async def _forward(self, batch: list[_Item]) -> list[_Result]:
        """One forward pass over every window of every clip, in model calls of at most ``inference_batch_size``
        windows with the event loop free between them; scores as ``Classifier.scores`` computes them."""
        from ..inference import scores_from_logits

        clf = self.classifier
        length = clf.clip_samples
        per_clip = [windows(item.clip, length) for item in batch]
        owner = np.repeat(np.arange(len(batch)), [len(w) for w in per_clip])
        stacked = np.concatenate(per_clip)
        chunk = -(-len(stacked) // -(-len(stacked) // self._cap))  # in equal parts: 25 windows, cap 20 -> 13 + 12
        parts = []
        for start in range(0, len(stacked), chunk):
            if start:
                await asyncio.sleep(0)  # other requests get the loop between model calls
            parts.append(self._logits(stacked[start:start + chunk]))
        logits = np.concatenate(parts)
        sums = np.zeros((len(batch), logits.shape[1]))
        np.add.at(sums, owner, logits)
        counts = np.bincount(owner, minlength=len(batch))
        clip_scores = scores_from_logits(sums / counts[:, None], clf.multilabel)
        out = []
        for i, item in enumerate(batch):
            result = _Result(clip_scores[i])
            if item.windows:
                n, sr = len(item.clip), clf.sample_rate
                starts = np.asarray(window_starts(n, length), dtype=np.float64)
                result.times = np.stack([starts, starts + min(n, length)], axis=1) / sr
                result.window_scores = scores_from_logits(logits[owner == i].astype(np.float64), clf.multilabel)
            out.append(result)
        return out
