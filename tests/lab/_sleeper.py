"""A job for the worker-pool tests: marks that it started (a file named by the worker's pid in
the given folder), then sleeps for an hour."""

from __future__ import annotations

import os
import time


def mark_and_sleep(folder: str) -> None:
    """Creates ``folder/<pid>``, then sleeps."""
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(3600)
