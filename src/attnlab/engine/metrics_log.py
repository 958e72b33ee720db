"""A run's metrics files: ``metrics.jsonl`` (one JSON object per epoch) and optional CSV.

Each epoch's row is appended as one line (one ``write`` on an ``O_APPEND`` descriptor), so a
crash never leaves earlier rows half-rewritten. Rows are strict JSON: NaN and infinities are
written as ``null``. When a run resumes, the files are first rewritten atomically from the
checkpoint's history (rows of epochs after the checkpoint are dropped; they are trained again).

Example:
    >>> import json, os, tempfile
    >>> from attnlab.engine.metrics_log import MetricsLog
    >>> log = MetricsLog(tempfile.mkdtemp())
    >>> log.reset([])
    >>> log.append({"epoch": 1, "val_loss": float("nan")})
    >>> open(os.path.join(log.out, "metrics.jsonl")).read()
    '{"epoch": 1, "val_loss": null}\\n'
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from ..plain import plain
from .files import append_line, atomic_write_text


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON values, non-finite floats as None."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def json_line(row: dict[str, Any]) -> str:
    """One strict-JSON line (``allow_nan=False``: no bare NaN can slip through)."""
    return json.dumps(json_ready(row), allow_nan=False)


class MetricsLog:
    """Writes ``<out>/metrics.jsonl`` and, if ``csv_columns`` is given, ``<out>/metrics.csv``."""

    def __init__(self, out: str, csv_columns: Sequence[str] | None = None) -> None:
        self.out = out
        self.columns = tuple(csv_columns) if csv_columns else None
        self.jsonl = os.path.join(out, "metrics.jsonl")
        self.csv = os.path.join(out, "metrics.csv")

    def reset(self, history: list[dict[str, Any]]) -> None:
        """Rewrites the files atomically to hold exactly ``history``."""
        atomic_write_text(self.jsonl, "".join(json_line(row) + "\n" for row in history))
        if self.columns:
            atomic_write_text(self.csv, self._csv_text(history, header=True))

    def append(self, row: dict[str, Any]) -> None:
        """Adds one epoch's row."""
        append_line(self.jsonl, json_line(row))
        if self.columns:
            append_line(self.csv, self._csv_text([row], header=False))

    def _csv_text(self, rows: list[dict[str, Any]], *, header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n"
        )
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
