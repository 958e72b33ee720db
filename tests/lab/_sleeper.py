"""Jobs for the worker-pool tests: one marks that it started (a file named by the worker's pid
in the given folder), then sleeps for an hour; one interrupts the process that started it."""

from __future__ import annotations

import os
import signal
import time


def mark_and_sleep(folder: str) -> None:
    """Creates ``folder/<pid>``, then sleeps."""
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(3600)


def interrupt_parent(value: int) -> int:
    """Sends SIGINT to the parent process (as Ctrl-C would), then returns ``value``."""
    os.kill(os.getppid(), signal.SIGINT)
    return value
