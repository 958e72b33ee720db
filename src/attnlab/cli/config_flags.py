"""One command-line flag per field of a run config (``TrainConfig``, ``DetectConfig``,
``SegmentConfig``), generated from the dataclass so the CLI cannot drift from the config.

Every flag defaults to ``argparse.SUPPRESS``: only the options the user gives reach the config,
so values from a ``--config`` YAML file survive (precedence: field defaults < YAML < flags).
Values are parsed and checked by the config itself (one-line errors naming the field).

Example:
    >>> import argparse
    >>> from attnlab.cli.config_flags import add_config_flags
    >>> from attnlab.engine.config import TrainConfig
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser, TrainConfig)
    >>> sorted(vars(parser.parse_args(["--epochs", "3", "--milestones", "2", "3"])).items())
    [('epochs', '3'), ('milestones', ['2', '3'])]
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

METAVARS = {"out": "DIR", "data_dir": "DIR", "resume": "PATH"}


def metavar(name: str, hint: Any) -> str:
    """The flag's placeholder: DIR, PATH, N (integers), X (numbers), YAML (mappings), …"""
    if name in METAVARS:
        return METAVARS[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {int: "N", float: "X", dict: "YAML"}.get(base, name.split("_")[-1].upper())


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """``--config YAML`` and one ``--<field>`` per dataclass field of ``config_class``."""
    parser.add_argument(
        "--config", metavar="YAML", default=argparse.SUPPRESS, help="recipe file of config fields"
    )
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        default = field.default_factory() if callable(field.default_factory) else field.default
        shown = "none" if default is None else default
        # argparse %-formats help strings: a literal % must be doubled.
        help_text = f"{field.metadata['help']} (default: {shown})".replace("%", "%%")
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        hint = hints[field.name]
        if hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            item = typing.get_args(hint)[0]
            options.update(nargs="*", metavar="N" if item is int else "X")
        else:
            options["metavar"] = metavar(field.name, hint)
        parser.add_argument(flag, **options)
