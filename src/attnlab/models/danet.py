"""DANet for scene segmentation (Fu et al., "Dual Attention Network for Scene Segmentation",
CVPR 2019, arXiv 1809.02983): a dilated ResNet and the dual attention (DA) head.

Backbone: an attnlab ResNet without classifier. ImageNet ResNets are dilated to
``output_stride`` 8 (the paper) or 16; ``multi_grid=(1, 2, 4)`` multiplies the dilation of the
last stage's blocks as in the authors' Cityscapes setting (layer4 rates 4, 8, 16 at stride 8).
The CIFAR-style ResNets (resnet20 …, 64 channels at stride 4) are a CPU-sized option without
dilation or multi-grid.

Head (``head="danet"``) on the last stage's C channels, inter = C/4:

- PAM branch: 3×3 conv C→inter (no bias) + BN + ReLU → ``PositionAttention`` → 3×3 conv + BN
  + ReLU; CAM branch likewise with ``ChannelAttention`` (``cam_variant``, default the authors'
  ``"official"``);
- fusion: the sum of the two branches;
- three classifiers, each Dropout2d(0.1) + 1×1 conv (with bias): PAM branch, CAM branch, fused;
- every output upsampled bilinearly to the input size (``align_corners=True`` as in the
  authors' code; an option).

Ablations: ``head="pam"`` or ``"cam"`` keep one branch and its classifier; ``head="fcn"`` is the
baseline FCN head of the authors' codebase: 3×3 conv C→C/4 (no bias) + BN + ReLU + Dropout2d +
1×1 conv.

Outputs: ``model(x, aux=True)`` returns a dict of logits at the input size: ``"out"`` (the
prediction: fused for DANet, the only branch otherwise) plus ``"pam"`` and ``"cam"`` for the
DANet head (the three terms of the training loss); ``aux=False`` returns the ``"out"`` tensor
only. ``aux=None`` (default) means ``aux=self.training``: the dict in training, a tensor in eval.

Registered names: ``{head}_{backbone}`` for heads danet, pam, cam, fcn and backbones resnet18,
resnet34, resnet50, resnet101, resnet20 (e.g. ``danet_resnet50``, ``fcn_resnet18``).

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("danet_resnet18", num_classes=5).eval()
    >>> model(torch.randn(1, 3, 64, 48)).shape
    torch.Size([1, 5, 64, 48])
    >>> sorted(model.train()(torch.randn(2, 3, 64, 48)))
    ['cam', 'out', 'pam']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.danet import CAM_VARIANTS, ChannelAttention, PositionAttention
from ..plain import plain
from ..registry import create_model, register_model
from .resnet import BasicBlock, Bottleneck, ResNet

HEADS = ("danet", "pam", "cam", "fcn")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet20")
_CIFAR_BACKBONES = ("resnet20",)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(in_channels, num_classes, 1))


class DAHead(nn.Module):
    """The dual attention head, or one of its branches alone (the paper's ablation).

    Args:
        in_channels: channels C of the backbone feature.
        num_classes: classifier outputs.
        branches: ``("pam", "cam")`` (DANet), ``("pam",)`` or ``("cam",)``.
        dropout: Dropout2d probability before each classifier (paper: 0.1).
        cam_variant: ``ChannelAttention`` variant, ``"official"`` or ``"paper"``.
        pam_kwargs: options of ``PositionAttention`` (e.g. ``block_size``).

    Returns (forward): dict of logits at the feature resolution: ``"out"`` and, with both
    branches, ``"pam"`` and ``"cam"``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        branches: Sequence[str] = ("pam", "cam"),
        dropout: float = 0.1,
        cam_variant: str = "official",
        pam_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if (
            not branches
            or not set(branches) <= {"pam", "cam"}
            or len(set(branches)) != len(branches)
        ):
            raise ValueError(f"DAHead: branches must be a subset of ('pam', 'cam'), got {branches}")
        self.branches = tuple(branches)
        inter = in_channels // 4
        if inter < 1:
            raise ValueError(f"DAHead: in_channels must be >= 4, got {in_channels}")
        self.inter_channels = inter
        attention = {
            "pam": lambda: PositionAttention(inter, **(pam_kwargs or {})),
            "cam": lambda: ChannelAttention(inter, variant=cam_variant),
        }
        for name in self.branches:
            self.add_module(f"{name}_reduce", _conv_bn_relu(in_channels, inter))
            self.add_module(name, attention[name]())
            self.add_module(f"{name}_project", _conv_bn_relu(inter, inter))
            self.add_module(f"{name}_classifier", _classifier(inter, num_classes, dropout))
        self.fused_classifier = (
            _classifier(inter, num_classes, dropout) if len(self.branches) == 2 else None
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for name in self.branches:
            y = getattr(self, f"{name}_reduce")(x)
            features[name] = getattr(self, f"{name}_project")(getattr(self, name)(y))
        if self.fused_classifier is None:
            (name,) = self.branches
            return {"out": getattr(self, f"{name}_classifier")(features[name])}
        return {
            "out": self.fused_classifier(features["pam"] + features["cam"]),
            "pam": self.pam_classifier(features["pam"]),
            "cam": self.cam_classifier(features["cam"]),
        }


class FCNHead(nn.Module):
    """FCN baseline head: 3×3 conv C→C/4 (no bias) + BN + ReLU + Dropout2d + 1×1 conv.

    Args:
        in_channels: channels C of the backbone feature.
        num_classes: classifier outputs.
        dropout: Dropout2d probability (0.1 as in the authors' codebase).
    """

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        if in_channels < 4:
            raise ValueError(f"FCNHead: in_channels must be >= 4, got {in_channels}")
        self.inter_channels = in_channels // 4
        self.block = _conv_bn_relu(in_channels, self.inter_channels)
        self.classifier = _classifier(self.inter_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.block(x))}


def apply_multi_grid(backbone: ResNet, multi_grid: Sequence[int]) -> None:
    """Multiplies the dilation of the last stage's 3×3 convs by ``multi_grid[i]`` in block i.

    The stage's base rate is the dilation its blocks already use (4 at output stride 8); the
    first block's first conv takes the base rate too, as in the authors' code.
    """
    stage = getattr(backbone, backbone.feature_info[-1]["name"])
    if len(multi_grid) != len(stage):
        raise ValueError(
            f"DANet: multi_grid needs one factor per block of the last stage ({len(stage)}), "
            f"got {tuple(multi_grid)}"
        )
    base = stage[-1].conv2.dilation[0]
    for block, factor in zip(stage, multi_grid, strict=True):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"DANet: multi_grid factors must be ints >= 1, got {multi_grid}")
        convs = [block.conv2] if isinstance(block, Bottleneck) else [block.conv1, block.conv2]
        assert isinstance(block, (BasicBlock, Bottleneck))
        for conv in convs:
            conv.dilation = conv.padding = (base * factor, base * factor)


class DANet(nn.Module):
    """A dilated ResNet with a DA head (or one branch, or the FCN baseline head).

    Args:
        backbone: registered ResNet name (``"resnet50"``, ``"resnet18"``, ``"resnet20"`` …).
        num_classes: classes including background.
        head: ``"danet"``, ``"pam"``, ``"cam"`` or ``"fcn"``.
        output_stride: 8 (paper) or 16 for ImageNet ResNets; None keeps the CIFAR ResNets'
            stride 4 (they have no dilation option).
        multi_grid: per-block dilation factors of the last stage, e.g. ``(1, 2, 4)``; None: off.
        dropout: Dropout2d probability before each classifier (paper: 0.1).
        cam_variant: ``"official"`` (authors' code, default) or ``"paper"``.
        pam_kwargs: options of ``PositionAttention`` (``block_size``, ``max_block_elements``).
        align_corners: of the bilinear upsampling (True: the authors' code).
        attn: attention inside the backbone's blocks (a registered name), usually None.
        backbone_kwargs: further options of the backbone (``attn_kwargs``, ``zero_init_last``
            — True here by default…).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        num_classes: int = 19,
        head: str = "danet",
        output_stride: int | None = 8,
        multi_grid: Sequence[int] | None = None,
        dropout: float = 0.1,
        cam_variant: str = "official",
        pam_kwargs: dict | None = None,
        align_corners: bool = True,
        attn: Any = None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"DANet: head must be one of {HEADS}, got {head!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"DANet: num_classes must be an int >= 1, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DANet: dropout must be in [0, 1), got {dropout!r}")
        if cam_variant not in CAM_VARIANTS:
            raise ValueError(
                f"DANet: cam_variant must be one of {CAM_VARIANTS}, got {cam_variant!r}"
            )
        # Zero-initialised residual branches: measured better for short segmentation runs
        # from scratch (tests/segment's DANet run), unlike classification's default.
        options = {"zero_init_last": True, **(backbone_kwargs or {})}
        if output_stride is not None:
            options["output_stride"] = output_stride
        self.backbone = create_model(backbone, attn=attn, num_classes=0, **options)
        if multi_grid is not None:
            if self.backbone.config.get("stem") != "imagenet" or output_stride is None:
                raise ValueError(
                    "DANet: multi_grid needs an ImageNet ResNet with an output_stride, "
                    f"got backbone {backbone!r} with output_stride {output_stride!r}"
                )
            apply_multi_grid(self.backbone, multi_grid)
        in_channels = self.backbone.feature_info[-1]["channels"]
        if head == "fcn":
            self.head = FCNHead(in_channels, num_classes, dropout=dropout)
        else:
            branches = ("pam", "cam") if head == "danet" else (head,)
            self.head = DAHead(
                in_channels,
                num_classes,
                branches=branches,
                dropout=dropout,
                cam_variant=cam_variant,
                pam_kwargs=pam_kwargs,
            )
        self.num_classes, self.head_type, self.align_corners = num_classes, head, align_corners
        self.output_stride = self.backbone.feature_info[-1]["stride"]
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def attention_modules(self) -> list[nn.Module]:
        """The head's PAM/CAM modules, then any attention inside the backbone."""
        head = [
            m for m in self.head.modules() if isinstance(m, (PositionAttention, ChannelAttention))
        ]
        return head + self.backbone.attention_modules()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": […], "head": […]}``, e.g. for the recipe's 10× head learning rate."""
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last backbone stage, B×C×H/s×W/s (s = ``output_stride``)."""
        return self.backbone.forward_features(x)

    def forward_head(
        self,
        features: torch.Tensor,
        size: Sequence[int] | None = None,
        aux: bool | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Head logits, upsampled to ``size`` (None: left at the feature resolution)."""
        outputs = self.head(features)
        if size is not None:
            outputs = {
                k: F.interpolate(
                    v, size=tuple(size), mode="bilinear", align_corners=self.align_corners
                )
                for k, v in outputs.items()
            }
        if aux is None:
            aux = self.training
        return outputs if aux else outputs["out"]

    def forward(
        self, x: torch.Tensor, aux: bool | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits B×classes×H×W: a dict with the auxiliary outputs if ``aux`` (default: in
        training), else the ``"out"`` tensor."""
        if x.dim() != 4:
            raise ValueError(f"DANet: expected a B×3×H×W tensor, got shape {tuple(x.shape)}")
        return self.forward_head(self.forward_features(x), x.shape[-2:], aux)


def build_segmenter(
    cls: type[DANet], name: str, head: str, backbone: str, kwargs: dict, head_options: dict
) -> DANet:
    """Builds ``cls(backbone, head=head, **kwargs)`` for a registered name and sets its config.

    ``head_options`` maps the head's own options to their defaults; the config records them
    with the shared ones, so ``create_model(**model.config)`` rebuilds the model.
    """
    if "head" in kwargs or "backbone" in kwargs:
        raise TypeError(f"{name}: head and backbone are fixed by the name; pick another model name")
    if backbone in _CIFAR_BACKBONES:
        kwargs = {"output_stride": None, **kwargs}
    try:
        model = cls(backbone, head=head, **kwargs)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    options = {
        "num_classes": model.num_classes,
        "output_stride": kwargs.get("output_stride", 8),
        "multi_grid": kwargs.get("multi_grid"),
        "dropout": kwargs.get("dropout", 0.1),
        **{key: kwargs.get(key, default) for key, default in head_options.items()},
        "align_corners": model.align_corners,
        "attn": kwargs.get("attn"),
        "backbone_kwargs": kwargs.get("backbone_kwargs"),
    }
    model.config = plain({"name": name, **options})  # create_model(**config) rebuilds it
    return model


def _register(head: str, backbone: str) -> None:
    name = f"{head}_{backbone}"

    def factory(**kwargs: Any) -> DANet:
        options = {"cam_variant": "official", "pam_kwargs": None}
        return build_segmenter(DANet, name, head, backbone, kwargs, options)

    factory.__doc__ = f"{name}: {head} head on a dilated {backbone} (segmentation)."
    register_model(
        name, family="danet", task="segmentation", head=head, backbone=backbone,
        paper="arXiv 1809.02983",
    )(factory)  # fmt: skip


for _head in HEADS:
    for _backbone in BACKBONES:
        _register(_head, _backbone)
