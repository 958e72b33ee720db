"""``attnlab list``: the registered attention modules with their papers."""

from __future__ import annotations

import argparse
import json

from ..registry import ATTENTION_KINDS, attention_info, list_attention


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(name, help="list the attention modules and their papers")
    parser.add_argument("--kind", choices=ATTENTION_KINDS, help="only modules of this kind")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = [attention_info(name) for name in list_attention(args.kind)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "class", "kind", "year", "arxiv", "paper")
    table = [header] + [tuple(str(row[key]) for key in header) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for row in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    return 0
