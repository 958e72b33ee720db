"""The comparison jobs' worker processes end with their parent: killed (SIGKILL, no cleanup
runs), terminated (SIGTERM) or interrupted (SIGINT)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from _sleeper import interrupt_parent

from attnlab.lab.pool import deferred_signals, raise_for, run_parallel, stop_processes

# A parent running hour-long jobs in two workers; each job first marks its worker's pid.
PARENT = r"""
import sys
from _sleeper import mark_and_sleep
from attnlab.lab.pool import run_parallel

run_parallel(mark_and_sleep, [sys.argv[1]] * 3, parallel=2)
"""
HERE = os.path.dirname(os.path.abspath(__file__))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux: /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=str)
def test_workers_end_when_the_parent_is_killed(sig, tmp_path):
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120.0  # starting workers imports torch: slow when loaded
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent ended early"
            time.sleep(0.1)
        workers = [int(name) for name in os.listdir(tmp_path)]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        time.sleep(0.5)
        assert all(alive(pid) for pid in workers)  # inside their jobs
        parent.send_signal(sig)
        parent.wait(10)
        deadline = time.monotonic() + 5.0
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), f"workers outlived a {sig.name}"
        if sig == signal.SIGTERM:
            assert parent.returncode == 128 + signal.SIGTERM  # SystemExit(143) after clean-up
    finally:
        parent.kill()
        parent.wait()


def test_serial_runs_in_order_and_reports_each_result():
    seen = []
    results = run_parallel(abs, [-2, 3, -4], parallel=1, on_result=lambda i, r: seen.append((i, r)))
    assert results == [2, 3, 4] and seen == [(0, 2), (1, 3), (2, 4)]
    with pytest.raises(ValueError, match="parallel must be >= 1, got 0"):
        run_parallel(abs, [1], parallel=0)
    stop_processes([])  # nothing to stop


def test_signals_are_recorded_and_raised_where_the_caller_chooses():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with deferred_signals() as received:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handlers run between two bytecodes of this thread
        assert received == [signal.SIGINT, signal.SIGTERM]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):
        raise_for(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        raise_for(signal.SIGTERM)
    assert exit_info.value.code == 143


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_interrupt_during_the_last_job_is_not_lost():
    # The job's SIGINT reaches this process while its result is on the way: run_parallel
    # raises KeyboardInterrupt instead of returning, and no worker is left behind.
    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):
        run_parallel(interrupt_parent, [7], parallel=2)
    assert not any(alive(p.pid) for p in multiprocessing.active_children() if p not in before)
