"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash mid-write leaves the previous file whole. Temporary files are named
``.<name>.tmp-<pid>-<random>`` and created with mode 0666 minus the umask (the permissions an
ordinary ``open(path, "w")`` gives), so a finished file is readable like any other.
:func:`remove_temporaries` deletes the ones a killed process left behind.

Example:
    >>> import os, tempfile
    >>> from attnlab.engine.files import atomic_write_text
    >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
    >>> atomic_write_text(path, "hello\\n")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('hello\\n', ['note.txt'])
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import IO, Any

TEMP_MARK = ".tmp-"


def temporary_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write(handle)`` on a temporary file next to ``path``, then renames it to ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_name(path)
    # O_EXCL: a fresh file; 0o666: the umask decides the final permissions, as for open().
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_png(image: Any, path: str | os.PathLike) -> None:
    """Writes a PIL image as PNG to ``path`` atomically."""
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends one line with a single ``write`` on an ``O_APPEND`` descriptor (never a partial
    rewrite of the file's earlier lines)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    descriptor = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """Deletes the temporary files of interrupted writes in ``folder``; returns their names."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") and TEMP_MARK in name:
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed
