"""The base of every run config: one value parser, the run options every task shares, YAML.

``RunConfig`` is a dataclass that ``TrainConfig`` (classification), ``DetectConfig`` and
``SegmentConfig`` extend. It parses values from the command line and YAML into each field's
type (one parser for all tasks: ``coerce``), refuses NaN and infinities in every number, and
reads and writes ``config.yaml``. A bad value or an unknown key is a ValueError naming the
config class and the field. The CLI's flags are generated from the same fields
(``attnlab.cli.config_flags``).

Example:
    >>> from attnlab.engine.runconfig import coerce
    >>> coerce("Example", "milestones", "30,60", list[int])
    [30, 60]
    >>> coerce("Example", "lr", "nan", float)
    Traceback (most recent call last):
    ValueError: Example.lr: must be a finite number, got 'nan'
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .files import atomic_write_text

NONE_WORDS = ("none", "null", "~", "")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# Fields that may differ between a checkpoint's config and the run resuming it: where the run
# writes, how it reports, and how long it trains (a larger --epochs trains on).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "out", "progress", "workers", "device", "overwrite", "allow_changes",
     "save_every", "threads", "data_dir", "download"}
)  # fmt: skip


def option(default: Any, text: str) -> Any:
    """A dataclass field with a help text (the CLI flag's help)."""
    if isinstance(default, (dict, list)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text})
    return field(default=default, metadata={"help": text})


def coerce(owner: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the type ``hint`` (``int``, ``float``, ``bool``, ``str``, ``dict``,
    ``list[int]``, ``list[float]``, or ``X | None``); strings (command line, YAML) are parsed.

    Raises:
        ValueError: ``"<owner>.<name>: expected …, got …"``; numbers must be finite.
    """
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in NONE_WORDS):
        if optional:
            return None
        if base in (dict, list) or typing.get_origin(base) is list:
            return (typing.get_origin(base) or base)()
        raise ValueError(f"{owner}.{name}: a value is required, got none")
    item = (typing.get_args(base) or (int,))[0] if typing.get_origin(base) in (list,) else None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
                return value.lower() in TRUE_WORDS
        elif base in (int, float) and not isinstance(value, bool):
            number = _number(base, value)
            if number is not None:
                if not math.isfinite(number):
                    raise ValueError(f"{owner}.{name}: must be a finite number, got {value!r}")
                return number
        elif base is str and isinstance(value, str):
            return value
        elif base is dict:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if isinstance(parsed, dict) or parsed is None:
                return dict(parsed or {})
        elif item is not None:
            # "30,60", ["30", "60"] and ["30,60"] (command line) all mean [30, 60].
            items = value if isinstance(value, (list, tuple)) else [value]
            parts = [p for v in items for p in (v.replace(",", " ").split()
                                                if isinstance(v, str) else [v])]  # fmt: skip
            return [coerce(owner, name, p, item) for p in parts]
    except ValueError as err:
        if str(err).startswith(f"{owner}.{name}:"):
            raise
    except (TypeError, yaml.YAMLError):
        pass
    if item is not None:
        kind = "a list of integers" if item is int else "a list of numbers"
    else:
        kind = "a mapping" if base is dict else getattr(base, "__name__", str(base))
    raise ValueError(f"{owner}.{name}: expected {kind}, got {value!r}")


def _number(base: type, value: Any) -> int | float | None:
    if isinstance(value, str):
        text = value.strip()
        if base is int:
            return int(text)
        return float(text)
    if isinstance(value, float):
        if base is int:
            return int(value) if value.is_integer() else None
        return value
    if isinstance(value, int):
        return base(value)
    return None


@dataclass
class RunConfig:
    """The options every run has (where it writes, how it resumes, how it reports); tasks'
    configs extend it with their model, data and recipe fields."""

    seed: int = option(0, "random seed (initialisation, augmentation, order)")
    deterministic: bool = option(
        False, "deterministic algorithms only (bitwise-reproducible runs and resumes)"
    )
    workers: int = option(0, "DataLoader worker processes")
    out: str = option("runs/train", "output folder (must be empty or new; see --overwrite)")
    overwrite: bool = option(False, "replace an earlier run's outputs in --out")
    resume: str | None = option(
        None, "last.pt to continue from (same model; a larger --epochs trains longer)"
    )
    allow_changes: bool = option(
        False, "--resume: accept settings that differ from the checkpoint's (listed)"
    )
    save_every: int = option(
        1, "write last.pt every N epochs (and at the end, and with best.pt); 0: only then"
    )
    progress: bool = option(True, "progress bars and per-epoch lines")

    def __post_init__(self) -> None:
        owner = type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(owner, f.name, getattr(self, f.name), hints[f.name]))
        for name, low in (("workers", 0), ("save_every", 0)):
            if getattr(self, name) < low:
                self.fail(name, f"must be >= {low}, got {getattr(self, name)}")
        self.validate()

    def validate(self) -> None:
        """Range checks of the task's fields (subclasses); raise through :meth:`fail`."""

    def fail(self, name: str, message: str) -> typing.NoReturn:
        raise ValueError(f"{type(self).__name__}.{name}: {message}")

    def check_at_least(self, lows: dict[str, int | float]) -> None:
        for name, low in lows.items():
            value = getattr(self, name)
            if value is not None and value < low:
                self.fail(name, f"must be >= {low}, got {value}")

    def check_in(self, name: str, choices: typing.Sequence[Any]) -> None:
        if getattr(self, name) not in choices:
            self.fail(
                name, f"must be one of {', '.join(map(str, choices))}, got {getattr(self, name)!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None) -> Any:
        """A config from a mapping; unknown keys are a ValueError naming them and ``source``."""
        source = source or cls.__name__
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of config fields, got {values!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names, key=str)
        if unknown:
            raise ValueError(
                f"{source}: unknown config key(s) {', '.join(map(str, unknown))}; "
                f"valid keys: {', '.join(sorted(names))}"
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> Any:
        """Reads a YAML mapping of fields (e.g. a run's ``config.yaml``); ``overrides`` win."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path) as handle:
            try:
                values = yaml.safe_load(handle) or {}
            except yaml.YAMLError as err:
                first = str(err).splitlines()[0] if str(err) else repr(err)
                raise ValueError(f"{path}: not valid YAML: {first}") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields")
        return cls.from_dict({**values, **overrides}, source=path)

    @classmethod
    def from_args(cls, args: Any) -> Any:
        """A config from parsed arguments (``attnlab train``, ``detect train``, ``segment train``).

        ``args`` is an ``argparse.Namespace`` (or a dict) holding only the options the user gave,
        plus an optional ``config`` (a YAML path) whose values the given options override.
        """
        given = dict(vars(args) if not isinstance(args, dict) else args)
        given.pop("command", None)
        yaml_path = given.pop("config", None)
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in given.items() if k in names}
        if yaml_path:
            return cls.from_yaml(yaml_path, **given)
        return cls.from_dict(given, source="command line")

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as YAML (the run's ``config.yaml``), atomically."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def changes_from(self, saved: dict[str, Any]) -> list[str]:
        """``"--flag: saved → now"`` for every setting that differs from a checkpoint's config
        (the fields in ``RESUMABLE_CHANGES`` excepted)."""
        lines = []
        for key, now in self.to_dict().items():
            if key in RESUMABLE_CHANGES or key not in saved:
                continue
            if saved[key] != now:
                lines.append(f"--{key.replace('_', '-')}: {saved[key]!r} → {now!r}")
        return lines
