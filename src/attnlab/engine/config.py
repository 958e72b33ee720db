"""The training configuration: one dataclass that CLI flags and YAML files fill.

``TrainConfig`` is the single source of truth for a run. Every field has a help text (used for
``attnlab train --help``); values are checked when the config is built, and a bad value or an
unknown key is a ValueError naming the field. The resolved config is written to
``<out>/config.yaml`` next to the run's outputs, and ``TrainConfig.from_yaml`` reads it back.

Example:
    >>> from attnlab.engine.config import TrainConfig
    >>> config = TrainConfig(attn="cbam", epochs=2)
    >>> config.attn, config.epochs, config.optimizer
    ('cbam', 2, 'sgd')
    >>> TrainConfig.from_dict({"epochs": "3", "milestones": "2,3"}).milestones
    [2, 3]
    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    ValueError: TrainConfig.epochs: must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

CHOICES = {
    "data": ("synthetic", "cifar10", "cifar100", "folder"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "step"),
    "amp": ("none", "bf16", "fp16"),
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


class RunConfig:
    """What every run config shares (TrainConfig, DetectConfig, SegmentConfig): building from a
    dict, a YAML file or parsed arguments, and writing the run's ``config.yaml``. Subclasses are
    dataclasses."""

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
                raise ValueError(f"{path}: not valid YAML: {err}") from err
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
        """Writes the config as YAML (the run's ``config.yaml``)."""
        with open(path, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a training run (see ``attnlab train --help``)."""

    # Model
    model: str = field(default="resnet20", metadata=_help("registered model name"))
    attn: str | None = field(
        default=None,
        metadata=_help("attention inside every block (attnlab list); none: no attention"),
    )
    attn_kwargs: dict = field(
        default_factory=dict,
        metadata=_help('attention options as YAML/JSON, e.g. "{rd_ratio: 0.125}"'),
    )
    stage_attn: str | None = field(
        default=None,
        metadata=_help("attention between stages (e.g. bam); none: no stage attention"),
    )
    model_kwargs: dict = field(
        default_factory=dict,
        metadata=_help('other model options as YAML/JSON, e.g. "{drop_rate: 0.1}"'),
    )
    # Data
    data: str = field(default="synthetic", metadata=_help("dataset: " + ", ".join(CHOICES["data"])))
    data_dir: str | None = field(default=None, metadata=_help("folder of the dataset's files"))
    download: bool = field(
        default=False, metadata=_help("download CIFAR into --data-dir if absent")
    )
    image_size: int | None = field(
        default=None, metadata=_help("image size (synthetic default 32, folders default 224)")
    )
    train_size: int | None = field(
        default=None, metadata=_help("number of synthetic training scenes")
    )
    val_size: int | None = field(
        default=None, metadata=_help("number of synthetic validation scenes")
    )
    difficulty: str = field(default="default", metadata=_help("synthetic scene difficulty"))
    data_seed: int = field(
        default=0,
        metadata=_help("synthetic scene seed (kept apart from --seed: same data for every seed)"),
    )
    # Optimisation
    epochs: int = field(default=10, metadata=_help("training epochs"))
    batch_size: int = field(
        default=128, metadata=_help("global batch size (split evenly across processes)")
    )
    optimizer: str = field(default="sgd", metadata=_help("sgd (momentum) or adamw"))
    lr: float = field(default=0.1, metadata=_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (AdamW: beta1)"))
    weight_decay: float = field(
        default=5e-4, metadata=_help("weight decay (not applied to biases, norms, scalar gains)")
    )
    schedule: str = field(
        default="cosine", metadata=_help("learning-rate schedule: cosine or step")
    )
    warmup_epochs: float = field(
        default=1.0,
        metadata=_help("linear warm-up length in epochs (per iteration; may be fractional)"),
    )
    milestones: list = field(
        default_factory=list,
        metadata=_help("step schedule: epochs at which lr *= gamma, e.g. 30,60 (empty: 50%, 75%)"),
    )
    gamma: float = field(default=0.1, metadata=_help("step schedule: lr factor at each milestone"))
    label_smoothing: float = field(
        default=0.0, metadata=_help("label smoothing of the training loss")
    )
    amp: str = field(
        default="none", metadata=_help("mixed precision: none, bf16 (CPU or CUDA) or fp16 (CUDA)")
    )
    grad_clip: float | None = field(default=None, metadata=_help("clip the gradient norm to this"))
    channels_last: bool = field(
        default=True,
        metadata=_help(
            "channels-last memory layout for model and images (faster convolutions; "
            "same results up to float rounding)"
        ),
    )
    # Run
    seed: int = field(
        default=0, metadata=_help("random seed (initialisation, augmentation, order)")
    )
    deterministic: bool = field(
        default=False, metadata=_help("deterministic algorithms only (bitwise-reproducible runs)")
    )
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    out: str = field(default="runs/train", metadata=_help("output folder"))
    resume: str | None = field(
        default=None,
        metadata=_help("last.pt to continue from (same model; a larger --epochs trains longer)"),
    )
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:N or mps"))
    save_every: int = field(
        default=1,
        metadata=_help("write last.pt every N epochs (and at the end); 0: only at the end"),
    )
    progress: bool = field(default=True, metadata=_help("progress bars and per-epoch lines"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _hints()[f.name]))
        self._validate()

    # Checks ---------------------------------------------------------------------------------

    def _validate(self) -> None:
        from ..registry import list_attention, list_classifiers

        def fail(name: str, message: str) -> None:
            raise ValueError(f"TrainConfig.{name}: {message}")

        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        models = list_classifiers()  # the engine trains classifiers
        if self.model not in models:
            fail(
                "model", f"unknown classification model {self.model!r}; valid: {', '.join(models)}"
            )
        for name in ("attn", "stage_attn"):
            value = getattr(self, name)
            if value in ("none", ""):
                setattr(self, name, None)
            elif value is not None and value not in list_attention():
                fail(
                    name, f"unknown attention {value!r}; valid: none, {', '.join(list_attention())}"
                )
        for name, low in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("save_every", 0)):
            if getattr(self, name) < low:
                fail(name, f"must be >= {low}, got {getattr(self, name)}")
        for name in ("image_size", "train_size", "val_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                fail(name, f"must be a positive integer or none, got {getattr(self, name)}")
        if self.lr <= 0:
            fail("lr", f"must be > 0, got {self.lr}")
        for name, low, high in (("momentum", 0, 1), ("label_smoothing", 0, 1)):
            if not low <= getattr(self, name) < high:
                fail(name, f"must be in [{low}, {high}), got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            fail("gamma", f"must be in (0, 1], got {self.gamma}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            fail("grad_clip", f"must be > 0 or none, got {self.grad_clip}")
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            fail("milestones", f"must be increasing epochs >= 1, got {self.milestones}")
        device = self.device
        if not (device in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(device)):
            fail("device", f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
        if self.data in ("cifar10", "cifar100", "folder") and not self.data_dir:
            fail("data_dir", f"data {self.data!r} needs a data directory (--data-dir)")


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@typing.no_type_check
def _hints() -> dict[str, Any]:
    # Resolved once: the annotations are strings under `from __future__ import annotations`.
    if not hasattr(_hints, "cache"):
        _hints.cache = typing.get_type_hints(TrainConfig)
    return _hints.cache


_NONE_WORDS = ("none", "null", "~", "")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field's type; strings (from the command line) are parsed."""
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in _NONE_WORDS):
        if optional:
            return None
        if base in (dict, list):
            return base()
        raise ValueError(f"TrainConfig.{name}: a value is required, got none")
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                            "no", "off"):  # fmt: skip
                return value.lower() in ("1", "true", "yes", "on")
            if isinstance(value, bool):
                return value
        elif base is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, (int, str)):
                return int(value)
        elif base is float:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, (int, float, str)):
                return float(value)
        elif base is str:
            if isinstance(value, str):
                return value
        elif base is dict:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if isinstance(parsed, dict):
                return dict(parsed)
            if parsed is None:
                return {}
        elif base is list:
            if isinstance(value, (str, int)):
                value = [value]
            if isinstance(value, (list, tuple)):
                # "30,60", ["30", "60"] and ["30,60"] (command line) all mean [30, 60].
                value = [p for v in value for p in (v.replace(",", " ").split()
                                                    if isinstance(v, str) else [v])]  # fmt: skip
                return [_coerce(name, v, int) for v in value]
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    kind = {dict: "a mapping", list: "a list of integers"}.get(
        base, getattr(base, "__name__", base)
    )
    raise ValueError(f"TrainConfig.{name}: expected {kind}, got {value!r}")
