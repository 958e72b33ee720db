"""Self-attention segmentation heads on the dilated ResNets of :mod:`attnlab.models.danet`:
Non-local (Wang et al., arXiv 1711.07971), CCNet's recurrent criss-cross head (Huang et al.,
arXiv 1811.11721) and a polarized self-attention head (Liu et al., arXiv 2107.00782).

Every head has the same frame, the one mmsegmentation's ``NLHead`` and ``CCHead`` use (an FCN
head with two convolutions and the input concatenated) and CCNet's RCCA module follows:

    x (C) → 3×3 conv C→C/4 + BN + ReLU → attention → 3×3 conv C/4→C/4 + BN + ReLU
          → concat with x (C + C/4) → 3×3 conv → C/4 + BN + ReLU → Dropout2d(0.1) → 1×1 conv

with C/4 = 512 on ResNet-50/101 (mmsegmentation's ``channels=512``). The attention:

- ``nl``: :class:`~attnlab.layers.NonLocalBlock`, embedded Gaussian, inter channels C/8 (the
  block's C/2 of its 512 inputs), θᵀφ scaled by d^-1/2 (``preset="official"``, as the authors'
  code and mmsegmentation's ``use_scale=True``), no sub-sampling, BN after W_z starting at 0;
  memory linear in H·W (blocked softmax), so full-resolution inference fits;
- ``ccnet``: :class:`~attnlab.layers.CrissCrossAttention` with R = 2 (RCCA, shared weights);
- ``psa``: :class:`~attnlab.layers.PolarizedSelfAttention` (paper preset, parallel layout).
  The PSA paper inserts the module into its backbone's blocks, not into a head; this head is
  this library's design, for comparing the attention forms on one frame.

Options of the attention go in ``head_kwargs`` (e.g. ``{"recurrence": 1}``,
``{"layout": "sequential"}``, ``{"block_size": 256}``). The decode heads' auxiliary FCN head
on layer3 (mmsegmentation, loss weight 0.4) is not included: every head here, like the FCN
baseline, is trained on its ``"out"`` logits alone.

Registered names: ``{head}_{backbone}`` for heads nl, ccnet, psa and backbones resnet18,
resnet34, resnet50, resnet101, resnet20 (e.g. ``ccnet_resnet50``); the FCN baseline and DANet
are ``fcn_*`` and ``danet_*`` of :mod:`attnlab.models.danet`.

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("ccnet_resnet18", num_classes=5).eval()
    >>> model(torch.randn(1, 3, 64, 48)).shape
    torch.Size([1, 5, 64, 48])
    >>> sorted(model.train()(torch.randn(2, 3, 64, 48)))
    ['out']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers.criss_cross import CrissCrossAttention
from ..layers.nonlocal_block import NonLocalBlock
from ..layers.polarized import PolarizedSelfAttention
from ..registry import register_model
from .danet import BACKBONES, DANet, build_segmenter

SEG_HEADS = {
    "nl": (NonLocalBlock, {"mode": "embedded_gaussian", "preset": "official"}),
    "ccnet": (CrissCrossAttention, {"recurrence": 2}),
    "psa": (PolarizedSelfAttention, {"preset": "paper", "layout": "parallel"}),
}
PAPERS = {"nl": "arXiv 1711.07971", "ccnet": "arXiv 1811.11721", "psa": "arXiv 2107.00782"}


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionHead(nn.Module):
    """FCN head with a self-attention module between its two convs and the input concatenated.

    Args:
        in_channels: channels C of the backbone feature.
        num_classes: classifier outputs.
        attention: ``"nl"``, ``"ccnet"`` or ``"psa"``.
        dropout: Dropout2d probability before the classifier (0.1).
        head_kwargs: options of the attention module, over the head's defaults.

    Returns (forward): ``{"out": logits}`` at the feature resolution.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        attention: str,
        dropout: float = 0.1,
        head_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if attention not in SEG_HEADS:
            raise ValueError(
                f"AttentionHead: attention must be one of {list(SEG_HEADS)}, got {attention!r}"
            )
        if in_channels < 4:
            raise ValueError(f"AttentionHead: in_channels must be >= 4, got {in_channels}")
        inter = in_channels // 4
        self.inter_channels = inter
        cls, defaults = SEG_HEADS[attention]
        self.reduce = _conv_bn_relu(in_channels, inter)
        self.attention = cls(inter, **{**defaults, **(head_kwargs or {})})
        self.project = _conv_bn_relu(inter, inter)
        self.bottleneck = _conv_bn_relu(in_channels + inter, inter)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.project(self.attention(self.reduce(x)))
        y = self.bottleneck(torch.cat([x, y], dim=1))  # B×(C + C/4)×h×w → B×C/4×h×w
        return {"out": self.classifier(y)}


class AttentionSegNet(DANet):
    """A dilated ResNet with an :class:`AttentionHead`; DANet's interface (``forward``,
    ``forward_features``, ``forward_head``, ``parameter_groups``, ``config``).

    Args:
        backbone: registered ResNet name.
        head: ``"nl"``, ``"ccnet"`` or ``"psa"``.
        num_classes: classes including background.
        output_stride: 8 (default) or 16 for ImageNet ResNets; None for the CIFAR ResNets.
        multi_grid: per-block dilation factors of the last stage; None: off.
        dropout: Dropout2d probability before the classifier.
        head_kwargs: options of the head's attention module.
        align_corners: of the bilinear upsampling.
        attn: attention inside the backbone's blocks, usually None.
        backbone_kwargs: further options of the backbone.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        head: str = "nl",
        num_classes: int = 19,
        output_stride: int | None = 8,
        multi_grid: Sequence[int] | None = None,
        dropout: float = 0.1,
        head_kwargs: dict | None = None,
        align_corners: bool = True,
        attn: Any = None,
        backbone_kwargs: dict | None = None,
    ) -> None:
        if head not in SEG_HEADS:
            raise ValueError(
                f"AttentionSegNet: head must be one of {list(SEG_HEADS)}, got {head!r}"
            )
        super().__init__(
            backbone,
            num_classes=num_classes,
            head="fcn",
            output_stride=output_stride,
            multi_grid=multi_grid,
            dropout=dropout,
            align_corners=align_corners,
            attn=attn,
            backbone_kwargs=backbone_kwargs,
        )
        in_channels = self.backbone.feature_info[-1]["channels"]
        self.head = AttentionHead(
            in_channels, num_classes, attention=head, dropout=dropout, head_kwargs=head_kwargs
        )
        self.head_type = head
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def attention_modules(self) -> list[nn.Module]:
        """The head's attention module, then any attention inside the backbone."""
        return [self.head.attention] + self.backbone.attention_modules()


def _register(head: str, backbone: str) -> None:
    name = f"{head}_{backbone}"

    def factory(**kwargs: Any) -> AttentionSegNet:
        options = {"head_kwargs": None}
        return build_segmenter(AttentionSegNet, name, head, backbone, kwargs, options)

    factory.__doc__ = f"{name}: {head} head on a dilated {backbone} (segmentation)."
    register_model(
        name, family="seg_heads", task="segmentation", head=head, backbone=backbone,
        paper=PAPERS[head],
    )(factory)  # fmt: skip


for _head in SEG_HEADS:
    for _backbone in BACKBONES:
        _register(_head, _backbone)
