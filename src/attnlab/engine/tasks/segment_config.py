"""The segmentation training configuration (DANet, Fu et al., CVPR 2019, arXiv 1809.02983).

``SegmentConfig`` is the single source of truth of an ``attnlab segment train`` run: CLI flags
and an optional YAML file fill it, every field has a help text (the CLI's ``--help``), values
are checked when it is built (a ValueError naming the field), and the resolved config is
written to ``<out>/config.yaml`` and stored in every checkpoint. It extends
:class:`~attnlab.engine.runconfig.RunConfig` (shared run options, one value parser; NaN and
infinities are refused).

Recipe defaults follow the paper where they make sense at CPU scale: SGD with momentum 0.9,
poly learning rate (power 0.9), head learning rate 10× the backbone's, weight decay 1e-4, the
equal-weight sum of the fused, PAM and CAM losses, ignore index 255, scale 0.5–2.0 + crop +
flip + jitter. The model, data size and learning rate are CPU-sized (``danet_resnet20`` on
64×64 synthetic scenes, lr 0.01).

Example:
    >>> from attnlab.engine.tasks.segment_config import SegmentConfig
    >>> config = SegmentConfig(model="fcn_resnet18", epochs="3", scales="0.75,1.0")
    >>> config.epochs, config.scales, config.loss_weights()
    (3, [0.75, 1.0], {'out': 1.0, 'pam': 1.0, 'cam': 1.0})
    >>> SegmentConfig(data="coco")
    Traceback (most recent call last):
    ValueError: SegmentConfig.data: must be one of synthetic, voc, got 'coco'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...registry import list_models
from ..config import check_device
from ..runconfig import RunConfig

CHOICES = {"data": ("synthetic", "voc"), "amp": ("none", "bf16")}
MULTI_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # DANet's multi-scale test


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SegmentConfig(RunConfig):
    """Everything that defines a segmentation run (see ``attnlab segment train --help``)."""

    # Model
    model: str = field(
        default="danet_resnet20",
        metadata=_help("segmentation model: {danet,pam,cam,fcn}_{resnet18,34,50,101,20}"),
    )
    model_kwargs: dict = field(
        default_factory=dict,
        metadata=_help('head/backbone options as YAML, e.g. "{cam_variant: paper, dropout: 0.1}"'),
    )
    # Data
    data: str = field(default="synthetic", metadata=_help("dataset: synthetic or voc"))
    data_dir: str | None = field(default=None, metadata=_help("VOC-layout folder (--data voc)"))
    num_classes: int | None = field(
        default=None,
        metadata=_help("classes with background (synthetic default 5, VOC default 21)"),
    )
    train_split: str = field(default="train", metadata=_help("VOC training split list"))
    val_split: str = field(default="val", metadata=_help("VOC validation split list"))
    image_size: int = field(default=64, metadata=_help("synthetic scene size"))
    train_size: int = field(default=1000, metadata=_help("synthetic training scenes"))
    val_size: int = field(default=200, metadata=_help("synthetic validation scenes"))
    difficulty: str = field(default="default", metadata=_help("synthetic scene difficulty"))
    num_targets: int = field(default=2, metadata=_help("class glyphs per synthetic scene"))
    data_seed: int = field(default=0, metadata=_help("synthetic scene seed (same for any --seed)"))
    crop_size: int = field(default=48, metadata=_help("training crop (also the --sliding window)"))
    scale: list[float] = field(
        default_factory=lambda: [0.5, 2.0],
        metadata=_help("random scale range of the training augmentation, e.g. 0.5,2.0"),
    )
    jitter: float = field(default=0.3, metadata=_help("brightness/contrast/saturation jitter"))
    # Optimisation
    epochs: int = field(default=10, metadata=_help("training epochs"))
    batch_size: int = field(default=16, metadata=_help("batch size"))
    lr: float = field(default=0.01, metadata=_help("backbone learning rate at step 0"))
    head_lr_mult: float = field(default=10.0, metadata=_help("head lr = this × lr (paper: 10)"))
    poly_power: float = field(
        default=0.9, metadata=_help("poly schedule: lr·(1 − step/steps)^power, per iteration")
    )
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    weight_decay: float = field(default=1e-4, metadata=_help("weight decay (rank-2+ weights only)"))
    loss_out: float = field(default=1.0, metadata=_help("weight of the fused output's loss"))
    loss_pam: float = field(default=1.0, metadata=_help("weight of the PAM branch's loss"))
    loss_cam: float = field(default=1.0, metadata=_help("weight of the CAM branch's loss"))
    ignore_index: int = field(default=255, metadata=_help("label of ignored pixels"))
    amp: str = field(default="none", metadata=_help("mixed precision: none or bf16"))
    # Evaluation (after every epoch)
    multi_scale: bool = field(default=False, metadata=_help("evaluate at --scales"))
    scales: list[float] = field(
        default_factory=lambda: list(MULTI_SCALES),
        metadata=_help("scales of --multi-scale (paper: 0.5,0.75,1.0,1.25,1.5,1.75)"),
    )
    flip: bool = field(default=False, metadata=_help("also evaluate on mirrored images"))
    sliding: bool = field(
        default=False, metadata=_help("evaluate by sliding --crop-size windows (large images)")
    )
    # Run
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:N or mps"))
    out: str = field(
        default="runs/segment",
        metadata=_help("output folder (must be empty or new; see --overwrite)"),
    )

    def loss_weights(self) -> dict[str, float]:
        """Weights of the loss terms by output name."""
        return {"out": self.loss_out, "pam": self.loss_pam, "cam": self.loss_cam}

    def eval_options(self) -> dict[str, Any]:
        """Keyword options of ``predict_probs`` for the evaluation this config asks for."""
        return {
            "scales": tuple(self.scales) if self.multi_scale else (1.0,),
            "flip": self.flip,
            "crop_size": self.crop_size if self.sliding else None,
        }

    def validate(self) -> None:
        fail = self.fail
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        models = list_models(task="segmentation")
        if self.model not in models:
            fail("model", f"unknown segmentation model {self.model!r}; valid: {', '.join(models)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("image_size", 16), ("crop_size", 1),
                          ("train_size", 1), ("val_size", 1), ("num_targets", 1)):  # fmt: skip
            if getattr(self, name) < low:
                fail(name, f"must be >= {low}, got {getattr(self, name)}")
        if self.num_classes is not None and self.num_classes < (
            3 if self.data == "synthetic" else 2
        ):
            fail("num_classes", f"too few classes for data {self.data!r}: {self.num_classes}")
        for name in ("lr", "head_lr_mult", "poly_power"):
            if getattr(self, name) <= 0:
                fail(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "loss_out", "loss_pam", "loss_cam", "jitter"):
            if getattr(self, name) < 0:
                fail(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            fail("momentum", f"must be in [0, 1), got {self.momentum}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            fail("scale", f"must be two numbers 0 < low <= high, got {self.scale}")
        if not self.scales or any(s <= 0 for s in self.scales):
            fail("scales", f"must be positive numbers, got {self.scales}")
        check_device(self)
        if self.data == "voc" and not self.data_dir:
            fail("data_dir", "data 'voc' needs a data directory (--data-dir)")
