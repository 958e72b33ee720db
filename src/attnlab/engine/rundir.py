"""Run folders: a run never destroys an earlier one, and two runs never share a folder.

- A fresh run needs an empty or new ``--out``. A folder holding another run's files is refused
  with one line naming ``--resume`` and ``--overwrite``; ``--overwrite`` deletes that run's
  outputs (``RUN_FILES``) first, and ``--resume <out>/last.pt`` continues it in place.
- ``<out>/run.lock`` holds the process id and host of the run writing there; a second run
  is refused while that process lives. A lock left by a killed run (its process is gone) is
  stale: it is taken over.
- Temporary files of interrupted writes (``.last.pt.tmp-…``) are removed when a run starts.

Example:
    >>> import os, tempfile
    >>> from attnlab.engine.rundir import RunFolder
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with RunFolder(out) as folder:
    ...     sorted(os.listdir(out))
    ['run.lock']
    >>> os.listdir(out)
    []
"""

from __future__ import annotations

import json
import os
import socket
from types import TracebackType

from .files import TEMP_MARK, remove_temporaries

LOCK = "run.lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt")
_HELD: set[str] = set()  # locks this process holds (its own pid in a lock is live only if here)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


class RunFolder:
    """Takes ``out`` for one run (a context manager); see the module docstring for the rules.

    Args:
        out: the run's folder (created if absent).
        resume: the checkpoint the run continues from, if any; a run resuming a checkpoint of
            ``out`` itself may write into it.
        overwrite: delete another run's outputs in ``out`` instead of refusing.
    """

    def __init__(self, out: str, *, resume: str | None = None, overwrite: bool = False) -> None:
        self.out = os.fspath(out)
        self.resume = resume
        self.overwrite = overwrite
        self.lock = os.path.join(self.out, LOCK)
        self.held = False
        self.removed: list[str] = []

    def __enter__(self) -> RunFolder:
        os.makedirs(self.out, exist_ok=True)
        self._take_lock()
        try:
            self._check_contents()
            self.removed = remove_temporaries(self.out) + self._remove_legacy_temporaries()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            _HELD.discard(os.path.abspath(self.lock))
            if os.path.exists(self.lock):
                os.remove(self.lock)

    def _take_lock(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                descriptor = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise ValueError(
                        f"--out {self.out}: another run (process {owner}) is writing there; "
                        f"choose another --out or wait for it (its lock: {self.lock})"
                    ) from None
                os.remove(self.lock)  # stale: its process is gone
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self.held = True
            _HELD.add(os.path.abspath(self.lock))
            return
        raise ValueError(f"--out {self.out}: cannot take the lock {self.lock}")

    def _owner(self) -> int | None:
        """The live process holding the lock, or None if the lock is stale."""
        try:
            with open(self.lock) as handle:
                record = json.load(handle)
            pid, host = int(record["pid"]), str(record["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or half-written by a killed process: stale
        if host != socket.gethostname():
            return pid  # another machine's process: cannot be checked, so it is respected
        if pid == os.getpid():
            return pid if os.path.abspath(self.lock) in _HELD else None
        return pid if _alive(pid) else None

    def _check_contents(self) -> None:
        present = [name for name in RUN_FILES if os.path.exists(os.path.join(self.out, name))]
        if not present:
            return
        if self.resume and _same_folder(os.path.dirname(os.path.abspath(self.resume)), self.out):
            return
        if self.overwrite:
            for name in present:
                os.remove(os.path.join(self.out, name))
            self.removed += present
            return
        raise ValueError(
            f"--out {self.out} holds an earlier run ({', '.join(present)}); continue it with "
            f"--resume {os.path.join(self.out, 'last.pt')}, replace it with --overwrite, or "
            "choose another --out"
        )

    def _remove_legacy_temporaries(self) -> list[str]:
        # Temporaries named .<file>.<random> (no TEMP_MARK) by older writers.
        removed = []
        for name in sorted(os.listdir(self.out)):
            legacy = any(name.startswith(f".{run}.") for run in RUN_FILES)
            if legacy and TEMP_MARK not in name:
                os.remove(os.path.join(self.out, name))
                removed.append(name)
        return removed


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
