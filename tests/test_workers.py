"""Worker processes end with the command: Ctrl-C or a SIGTERM neither waits for the queued tasks nor leaves the
workers running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from concurrent.futures import as_completed
    from audioclf.workers import process_pool

    def task(i, folder):
        open(os.path.join(folder, f"started-{i}-{os.getpid()}"), "w").close()
        time.sleep(600)

    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also where this test's runner ignores SIGINT
        with process_pool(2) as pool:
            for done in as_completed([pool.submit(task, i, sys.argv[1]) for i in range(5)]):
                done.result()
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_an_interrupted_pool_ends_its_workers_and_starts_no_queued_task(tmp_path, signum, code):
    (tmp_path / "pool.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "pool.py", str(tmp_path)], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    started = lambda: sorted(tmp_path.glob("started-*"))  # noqa: E731
    try:
        assert wait_for(lambda: len(started()) == 2, 120), f"the two workers did not start: {proc.stderr.read()}"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    workers = [int(p.name.rsplit("-", 1)[1]) for p in started()]
    assert {p.name.split("-")[1] for p in started()} == {"0", "1"}  # the three queued tasks never began
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 30), "a worker outlived the command"
    assert ("KeyboardInterrupt" in proc.stderr.read()) == (signum == signal.SIGINT)
