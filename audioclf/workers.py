"""Worker processes that end with the command that started them.

A plain ``ProcessPoolExecutor`` outlives an interrupted command: on Ctrl-C its ``with`` block waits for every queued
task to run to the end, and a SIGTERM to the command leaves the workers training on, then waiting forever for work.
:func:`process_pool` ends them instead.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

TERMINATE_WAIT_S = 10.0  # how long a terminated worker is waited for before it is killed


def exit_on_sigterm(signum, frame) -> None:
    """A SIGTERM handler: raise ``SystemExit(128 + SIGTERM)`` (143, the shell's code for it) where the main thread is,
    so ``finally`` blocks and :func:`process_pool` run."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def process_pool(jobs: int, initializer=None, initargs: tuple = ()):
    """A ``ProcessPoolExecutor`` of ``jobs`` fresh interpreters (spawn: none inherits this process's threads or CUDA
    state). On normal exit it waits for its tasks, like the plain one. When the block raises (a failure, Ctrl-C's
    ``KeyboardInterrupt``, or a SIGTERM, which raises ``SystemExit(143)`` here while the block runs in the main
    thread), the queued tasks are cancelled and the workers terminated (killed after ``TERMINATE_WAIT_S``), not
    waited for; then the exception goes on."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                               initargs=initargs)
    previous = None
    if threading.current_thread() is threading.main_thread():  # a signal handler can only be set there
        previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield pool
        pool.shutdown(wait=True)  # inside the try: a SIGTERM while it waits ends the workers too
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        workers = set(multiprocessing.active_children()) - before  # this pool's, not other children of the process
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(TERMINATE_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
