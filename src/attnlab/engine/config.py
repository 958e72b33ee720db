"""The classification training configuration: one dataclass that CLI flags and YAML files fill.

``TrainConfig`` is the single source of truth for an ``attnlab train`` run. It extends
:class:`~attnlab.engine.runconfig.RunConfig` (the run options every task shares and the one
value parser): every field has a help text (used for ``attnlab train --help``); values are
checked when the config is built, and a bad value, a NaN or infinite number, or an unknown key
is a ValueError naming the field. The resolved config is written to ``<out>/config.yaml`` next
to the run's outputs, and ``TrainConfig.from_yaml`` reads it back.

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

from dataclasses import dataclass, field

from ..registry import check_model_name, list_attention, list_classifiers
from .runconfig import RunConfig, option

__all__ = ["CHOICES", "RunConfig", "TrainConfig"]

CHOICES = {
    "data": ("synthetic", "cifar10", "cifar100", "folder"),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "step"),
    "amp": ("none", "bf16", "fp16"),
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a training run (see ``attnlab train --help``)."""

    # Model
    model: str = field(
        default="resnet20", metadata=_help("registered model name, or tv:<name> / timm:<name>")
    )
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
    augment: bool = field(
        default=True,
        metadata=_help(
            "training augmentation (random crop; CIFAR and folders also flip); off: the "
            "training images as they are"
        ),
    )
    data_seed: int = field(
        default=0,
        metadata=_help("synthetic scene seed (kept apart from --seed: same data for every seed)"),
    )
    # Optimisation
    epochs: int = field(default=10, metadata=_help("training epochs"))
    batch_size: int = field(
        default=64, metadata=_help("global batch size (split evenly across processes)")
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
    milestones: list[int] = field(
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
    precise_bn_images: int = field(
        default=512,
        metadata=_help(
            "before each evaluation, recompute BatchNorm running statistics over this many "
            "training images (precise BN); 0: off, keep the moving averages"
        ),
    )
    channels_last: bool = field(
        default=True,
        metadata=_help(
            "channels-last memory layout for model and images (faster convolutions; "
            "same results up to float rounding)"
        ),
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")

    def validate(self) -> None:
        for name, choices in CHOICES.items():
            self.check_in(name, choices)
        models = list_classifiers()  # the engine trains classifiers
        if ":" in self.model:  # a torchvision / timm classifier: "tv:resnet50"
            try:
                check_model_name(self.model)
            except (ValueError, ImportError) as err:
                self.fail("model", str(err))
        elif self.model not in models:
            self.fail(
                "model", f"unknown classification model {self.model!r}; valid: {', '.join(models)}"
            )
        for name in ("attn", "stage_attn"):
            value = getattr(self, name)
            if value in ("none", ""):
                setattr(self, name, None)
            elif value is not None and value not in list_attention():
                self.fail(
                    name, f"unknown attention {value!r}; valid: none, {', '.join(list_attention())}"
                )
        self.check_at_least({"epochs": 1, "batch_size": 1, "precise_bn_images": 0})
        for name in ("image_size", "train_size", "val_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                self.fail(name, f"must be a positive integer or none, got {getattr(self, name)}")
        if self.lr <= 0:
            self.fail("lr", f"must be > 0, got {self.lr}")
        for name, low, high in (("momentum", 0, 1), ("label_smoothing", 0, 1)):
            if not low <= getattr(self, name) < high:
                self.fail(name, f"must be in [{low}, {high}), got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs"):
            if getattr(self, name) < 0:
                self.fail(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            self.fail("gamma", f"must be in (0, 1], got {self.gamma}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.fail("grad_clip", f"must be > 0 or none, got {self.grad_clip}")
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            self.fail("milestones", f"must be increasing epochs >= 1, got {self.milestones}")
        check_device(self)
        if self.data in ("cifar10", "cifar100", "folder") and not self.data_dir:
            self.fail("data_dir", f"data {self.data!r} needs a data directory (--data-dir)")


def check_device(config: RunConfig) -> None:
    """``config.device`` is auto, cpu, cuda, cuda:N or mps."""
    device = config.device
    prefix, _, index = device.partition(":")
    if not (device in ("auto", "cpu", "cuda", "mps") or (prefix == "cuda" and index.isdigit())):
        config.fail("device", f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
