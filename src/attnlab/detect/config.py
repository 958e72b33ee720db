"""The detection training configuration: one dataclass that CLI flags and YAML files fill.

``DetectConfig`` is to ``attnlab detect train`` what :class:`attnlab.engine.config.TrainConfig`
is to ``attnlab train``: every field has a help text (the CLI's flags are generated from it),
values from the command line or YAML are parsed and checked when the config is built, and a bad
value or an unknown key is a ValueError naming the field. The resolved config is written to
``<out>/config.yaml`` and stored in every checkpoint.

Example:
    >>> from attnlab.detect.config import DetectConfig
    >>> config = DetectConfig.from_dict({"phi": "2", "input_size": "128", "grad_clip": "none"})
    >>> config.phi, config.input_size, config.grad_clip, config.optimizer
    (2, 128, None, 'adamw')
    >>> DetectConfig(input_size=100)
    Traceback (most recent call last):
    ValueError: DetectConfig.input_size: must be a positive multiple of 32, got 100
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

# _coerce: the classification config's parser of command-line / YAML values, shared.
from ..engine.config import RunConfig, _coerce
from ..registry import list_attention

DATA_CHOICES = ("synthetic", "voc", "yolo")


def _f(default: Any, text: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DetectConfig(RunConfig):
    """Everything that defines a detection run (see ``attnlab detect train --help``)."""

    # Model
    phi: int = _f(0, "attention in the neck: 0 none, 1 SE, 2 CBAM, 3 ECA, 4 CA")
    attn: str | None = _f(None, "any registered attention by name (overrides --phi)")
    attn_kwargs: dict = _f({}, 'attention options as YAML/JSON, e.g. "{rd_ratio: 0.125}"')
    input_size: int = _f(416, "square input side, a multiple of 32 (anchors are in its pixels)")
    # Data
    data: str = _f("synthetic", "dataset: synthetic, voc or yolo")
    data_dir: str | None = _f(None, "voc: the VOC root; yolo: a folder with <split>/images|labels")
    train_split: str = _f("train", "training split (VOC ImageSets list / YOLO sub-folder)")
    val_split: str = _f("val", "validation split (VOC ImageSets list / YOLO sub-folder)")
    class_names: str | None = _f(
        None,
        "yolo: comma-separated names or a file of one name per line "
        "(default: <data-dir>/classes.txt); voc: default the 20 VOC classes",
    )
    num_classes: int = _f(6, "synthetic: number of classes (2..10)")
    num_targets: int = _f(2, "synthetic: objects per scene")
    difficulty: str = _f("default", "synthetic: easy, default or hard")
    train_size: int = _f(2000, "synthetic: training scenes")
    val_size: int = _f(200, "synthetic: validation scenes")
    data_seed: int = _f(0, "synthetic: scene seed (the same data for every --seed)")
    augment: bool = _f(True, "random scale/translate, flip and HSV jitter on training images")
    # Optimisation
    epochs: int = _f(30, "training epochs")
    batch_size: int = _f(16, "batch size")
    optimizer: str = _f("adamw", "adamw or sgd (momentum)")
    lr: float = _f(1e-3, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum (AdamW: beta1)")
    weight_decay: float = _f(5e-4, "weight decay (not on biases or norm parameters)")
    warmup_epochs: float = _f(1.0, "linear warm-up in epochs (then cosine to 0)")
    label_smoothing: float = _f(0.0, "label smoothing of the class targets")
    grad_clip: float | None = _f(10.0, "clip the gradient norm to this (none: no clipping)")
    # Evaluation
    conf_threshold: float = _f(0.01, "evaluation: keep detections scoring at least this")
    nms_threshold: float = _f(0.5, "evaluation: class-aware NMS IoU threshold")
    # Run
    seed: int = _f(0, "random seed (initialisation, augmentation, order)")
    threads: int | None = _f(None, "torch CPU threads (none: torch's default)")
    workers: int = _f(0, "DataLoader worker processes")
    device: str = _f("cpu", "cpu, cuda or cuda:N")
    out: str = _f("runs/detect", "output folder")
    resume: str | None = _f(None, "last.pt to continue from (same model; larger --epochs)")
    save_every: int = _f(1, "write last.pt every N epochs (and at the end); 0: only at the end")
    progress: bool = _f(True, "progress bar and per-epoch lines")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(DetectConfig)
        for f in dataclasses.fields(self):
            try:
                setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
            except ValueError as err:  # the shared parser names TrainConfig
                raise ValueError(str(err).replace("TrainConfig.", "DetectConfig.", 1)) from None
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ValueError(f"DetectConfig.{name}: {message}")

        for name, choices in (("data", DATA_CHOICES), ("optimizer", ("adamw", "sgd"))):
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.attn in ("none", ""):
            self.attn = None
        if self.attn is not None and self.attn not in list_attention():
            fail(
                "attn",
                f"unknown attention {self.attn!r}; valid: none, {', '.join(list_attention())}",
            )
        if self.attn is None and self.phi not in range(5):
            fail("phi", f"must be 0-4 (0 none, 1 SE, 2 CBAM, 3 ECA, 4 CA), got {self.phi}")
        if self.input_size < 32 or self.input_size % 32:
            fail("input_size", f"must be a positive multiple of 32, got {self.input_size}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("train_size", 1), ("val_size", 1),
                          ("num_targets", 1), ("workers", 0), ("save_every", 0)):  # fmt: skip
            if getattr(self, name) < low:
                fail(name, f"must be >= {low}, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            fail("threads", f"must be >= 1 or none, got {self.threads}")
        if self.lr <= 0:
            fail("lr", f"must be > 0, got {self.lr}")
        for name in ("momentum", "label_smoothing", "conf_threshold", "nms_threshold"):
            if not 0 <= getattr(self, name) < 1:
                fail(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            fail("grad_clip", f"must be > 0 or none, got {self.grad_clip}")
        if self.data != "synthetic" and not self.data_dir:
            fail("data_dir", f"data {self.data!r} needs a data directory (--data-dir)")
