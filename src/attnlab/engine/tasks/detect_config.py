"""The detection training configuration: one dataclass that CLI flags and YAML files fill.

``DetectConfig`` is to ``attnlab detect train`` what :class:`attnlab.engine.config.TrainConfig`
is to ``attnlab train``; both extend :class:`~attnlab.engine.runconfig.RunConfig`. Every field
has a help text (the CLI's flags are generated from it), values from the command line or YAML
are parsed and checked when the config is built, and a bad value (NaN and infinities included)
or an unknown key is a ValueError naming the field. The resolved config is written to
``<out>/config.yaml`` and stored in every checkpoint.

Example:
    >>> from attnlab.engine.tasks.detect_config import DetectConfig
    >>> config = DetectConfig.from_dict({"phi": "2", "input_size": "128", "grad_clip": "none"})
    >>> config.phi, config.input_size, config.grad_clip, config.optimizer
    (2, 128, None, 'adamw')
    >>> DetectConfig(input_size=100)
    Traceback (most recent call last):
    ValueError: DetectConfig.input_size: must be a positive multiple of 32, got 100
"""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import list_attention, list_models
from ..runconfig import RunConfig
from ..runconfig import option as _f

DATA_CHOICES = ("synthetic", "voc", "yolo")


@dataclass
class DetectConfig(RunConfig):
    """Everything that defines a detection run (see ``attnlab detect train --help``)."""

    # Model
    model: str = _f("yolov4_tiny", "registered detection model (attnlab list)")
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
    threads: int | None = _f(None, "torch CPU threads (none: torch's default)")
    device: str = _f("cpu", "cpu, cuda or cuda:N")
    out: str = _f("runs/detect", "output folder (must be empty or new; see --overwrite)")

    def validate(self) -> None:
        fail = self.fail
        for name, choices in (("data", DATA_CHOICES), ("optimizer", ("adamw", "sgd"))):
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        models = list_models(task="detection")
        if self.model not in models:
            fail("model", f"unknown detection model {self.model!r}; valid: {', '.join(models)}")
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
                          ("num_targets", 1)):  # fmt: skip
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
