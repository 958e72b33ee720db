"""The ``attnlab`` command: parses arguments, then calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__


class UsageError(Exception):
    """Bad command-line input: reported as one line on stderr with exit code 2."""


# Imported after UsageError so the commands can import it at module level.
from . import (  # noqa: E402
    bench_cmd,
    compare_cmd,
    detect_cmd,
    eval_cmd,
    export_cmd,
    list_cmd,
    predict_cmd,
    segment_cmd,
    train_cmd,
    viz_cmd,
)

COMMANDS = {
    "bench": bench_cmd,
    "compare": compare_cmd,
    "detect": detect_cmd,
    "eval": eval_cmd,
    "export": export_cmd,
    "list": list_cmd,
    "predict": predict_cmd,
    "segment": segment_cmd,
    "train": train_cmd,
    "viz": viz_cmd,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab", description="Attention in convolutional networks: modules and lab."
    )
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except (UsageError, ValueError, OSError) as err:
        # Bad input (names, values, files, folders, downloads) gets one line and exit code 2;
        # a bug elsewhere still shows its traceback.
        print(f"attnlab: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries
    the worker's whole traceback; its last line is the original message."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]
        kind, _, message = last.partition(": ")
        return message if message and kind.replace(".", "").isidentifier() else last
    return lines[0] if len(lines) == 1 else " ".join(lines)
