"""Jobs in parallel worker processes that do not outlive the process that started them.

A comparison trains many models at once in ``spawn``-started worker processes (a
:class:`concurrent.futures.ProcessPoolExecutor`). Left alone, workers keep training when their
parent dies; :func:`run_parallel` ends them on every path out:

- the parent is interrupted (Ctrl-C, ``SIGINT``: ``KeyboardInterrupt``; ``SIGTERM``:
  ``SystemExit(143)``) or a job fails: pending jobs are cancelled and the workers are
  terminated (``SIGTERM``, then ``SIGKILL`` for one that does not stop) before the exception
  goes on. While the jobs run, both signals are only recorded, and raised by the waiting loop
  between two waits: an exception raised at an arbitrary point inside the executor's waiting
  code could leave one of its locks held, and the executor's exit handler would then wait
  forever;
- the parent is killed outright (``SIGKILL``) and runs no code at all: every worker runs a
  daemon thread (:func:`exit_with_parent`) that polls its parent's process id and ends the
  worker once the parent is gone (the worker is re-parented, so ``os.getppid`` changes).

Example:
    >>> import os
    >>> from attnlab.lab.pool import run_parallel
    >>> run_parallel(abs, [-3, 4, -5], parallel=1)
    [3, 4, 5]
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

POLL_SECONDS = 0.5  # how often a worker checks its parent, and the parent for a signal
STOP_SECONDS = 5.0  # how long a terminated worker may take before it is killed


def default_jobs(runs: int) -> int:
    """Parallel runs by default: one per CPU core this process may use, at most ``runs``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(runs, cores or 1))


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # the parent is gone: end now, without running the job's cleanup


def exit_with_parent(parent: int, interval: float = POLL_SECONDS) -> None:
    """Worker initializer: ends this process soon after process ``parent`` is gone.

    Args:
        parent: the process id of the process that started this one.
        interval: seconds between two checks.
    """
    if os.getppid() != parent:  # the parent died while this worker started
        os._exit(1)
    watcher = threading.Thread(
        target=_watch_parent, args=(parent, interval), name="exit-with-parent", daemon=True
    )
    watcher.start()


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Within: ``SIGINT`` and ``SIGTERM`` are appended to the yielded list instead of acting,
    so the caller raises at a point of its choosing (:func:`raise_for`). Outside the main
    thread, where handlers cannot be set, signals act as usual and the list stays empty."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_for(signum: int) -> None:
    """Raises what the signal means: ``KeyboardInterrupt`` for ``SIGINT``, else
    ``SystemExit(128 + signum)``."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def stop_processes(processes: Sequence[Any]) -> None:
    """Terminates ``processes`` (multiprocessing processes) with SIGTERM, then kills those
    still alive after :data:`STOP_SECONDS`."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


def run_parallel(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    *,
    parallel: int,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(job) for job in jobs]``, ``parallel`` at a time in spawn-started processes.

    Args:
        fn: a module-level function (it is pickled by reference).
        jobs: its arguments, each picklable.
        parallel: worker processes; 1 runs the jobs one after another in this process.
        on_result: called in this process with (job index, result) as each job finishes.

    Returns:
        The results in the jobs' order.

    Raises:
        ValueError: ``parallel`` below 1.
    """
    if parallel < 1:
        raise ValueError(f"run_parallel: parallel must be >= 1, got {parallel}")
    results: list[Any] = [None] * len(jobs)
    if parallel == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if on_result is not None:
                on_result(i, results[i])
        return results
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        parallel, mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent, initargs=(os.getpid(),),
    )  # fmt: skip
    try:
        with deferred_signals() as received:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending and not received:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.__getitem__):
                    i = futures[future]
                    results[i] = future.result()
                    if on_result is not None:
                        on_result(i, results[i])
            if received:  # also one that came with the last result: the user asked to stop
                raise_for(received[0])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_processes([p for p in multiprocessing.active_children() if p not in before])
        raise
    pool.shutdown()
    return results
