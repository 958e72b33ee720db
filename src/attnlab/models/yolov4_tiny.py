"""YOLOv4-tiny (Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of Object
Detection", arXiv 2004.10934; the tiny variant of the Darknet cfg) with attention in the neck, as
in the bubbliiiing YOLOv4-tiny attention repositories.

- Backbone CSPDarknet53-tiny: two 3×3/2 convs (3→32→64), three CSP blocks (64, 128, 256), a
  3×3 conv 512→512. Every basic conv is conv (no bias) → BN → LeakyReLU(0.1).
- Neck and heads: P5 = 1×1 conv 512→256 on feat2; the stride-32 head is 3×3 conv 256→512 and a
  1×1 conv with bias; the upsample branch is 1×1 conv 256→128 and nearest ×2, concatenated with
  feat1 (384 channels) and fed to the stride-16 head (3×3 conv 384→256, 1×1 conv with bias).
- Attention (``phi``: 0 none, 1 SE, 2 CBAM, 3 ECA, 4 CA, or ``attn=`` any registered name) on
  feat1 (256 ch), on feat2 (512 ch) and on the upsampled P5 branch (128 ch) before the concat.
  ``phi`` uses the repositories' settings (:data:`PHI_ATTENTION`): SE r = 16 without biases,
  CBAM ``preset="yolo"`` (r = 8, bias-free MLP, [mean, max], no BN, 7×7), ECA adaptive k and
  CA ``preset="yolo"`` (r = 16, BN + ReLU, bias-free convs, as their ``CA_Block``).

Raw outputs (``forward``) are a list, stride 32 first: B×A(5+K)×H/32×W/32 and
B×A(5+K)×H/16×W/16, channel ``a·(5+K) + j`` holding attribute j (tx, ty, tw, th, objectness,
K class logits) of anchor a of that level; :mod:`attnlab.detect.decode` turns them into boxes.

Deviations from the classifier conventions (``forward_features``/``forward_head``/``forward``):
``forward_features`` returns the two backbone maps (feat1, feat2) after their attention, and
``forward_head`` takes that pair and returns the two raw head outputs; there is no pooled
``pre_logits``. Input height and width must be multiples of 32 (ValueError otherwise).

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("yolov4_tiny", num_classes=20, phi=2)
    >>> [tuple(o.shape) for o in model(torch.randn(1, 3, 64, 96))]
    [(1, 75, 2, 3), (1, 75, 4, 6)]
    >>> model.config["anchors"][3], model.config["anchor_masks"]
    ([81, 82], [[3, 4, 5], [1, 2, 3]])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..plain import plain
from ..registry import create_attention, register_model

# (w, h) in pixels at 416×416, and which anchors each level uses (stride 32 first). The
# reference repositories give the 26×26 level anchors 1, 2, 3 (anchor 0 is unused, anchor 3 is
# shared); kept as published so that their weights and results carry over.
ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
ANCHOR_MASKS = ((3, 4, 5), (1, 2, 3))
STRIDES = (32, 16)

# phi → (registered attention name, options): the reference repositories' module settings.
PHI_ATTENTION: dict[int, tuple[str | None, dict[str, Any]]] = {
    0: (None, {}),
    1: ("se", {"rd_ratio": 1 / 16, "bias": False}),
    2: ("cbam", {"preset": "yolo"}),
    3: ("eca", {"k_size": "adaptive"}),
    4: ("ca", {"preset": "yolo"}),
}


class ConvBNLeaky(nn.Module):
    """conv (no bias, padding k//2) → BN → LeakyReLU(0.1): Darknet's basic conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CSPBlock(nn.Module):
    """CSP block of CSPDarknet53-tiny: returns (2c channels at half resolution, ``feat``).

    route = conv3×3(x); the second half of route's channels goes through two 3×3 convs whose
    outputs are concatenated (c) and fused by a 1×1 conv (``feat``); [route, feat] (2c) is
    max-pooled 2×2.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = ConvBNLeaky(channels, channels, 3)
        self.conv2 = ConvBNLeaky(half, half, 3)
        self.conv3 = ConvBNLeaky(half, half, 3)
        self.conv4 = ConvBNLeaky(channels, channels, 1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.conv1(x)
        route1 = self.conv2(route[:, route.shape[1] // 2 :])  # second half of the channels
        feat = self.conv4(torch.cat([self.conv3(route1), route1], 1))
        return self.pool(torch.cat([route, feat], 1)), feat


class CSPDarknet53Tiny(nn.Module):
    """Backbone; ``forward`` returns feat1 (256 ch, stride 16) and feat2 (512 ch, stride 32)."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvBNLeaky(in_chans, 32, 3, 2)
        self.conv2 = ConvBNLeaky(32, 64, 3, 2)
        self.block1 = CSPBlock(64)
        self.block2 = CSPBlock(128)
        self.block3 = CSPBlock(256)
        self.conv3 = ConvBNLeaky(512, 512, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv2(self.conv1(x))
        x, _ = self.block1(x)
        x, _ = self.block2(x)
        x, feat1 = self.block3(x)
        return feat1, self.conv3(x)


def _head(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(ConvBNLeaky(in_ch, mid_ch, 3), nn.Conv2d(mid_ch, out_ch, 1))


class YOLOv4Tiny(nn.Module):
    """YOLOv4-tiny detector with optional attention at feat1, feat2 and the upsample branch.

    Args:
        num_classes: K object classes.
        phi: 0 none, 1 SE, 2 CBAM, 3 ECA, 4 CA with the reference settings (ignored when
            ``attn`` is given).
        attn: a registered attention name (or class) used instead of ``phi``.
        attn_kwargs: options of ``attn`` (with ``phi``: merged over the reference settings).
        in_chans: input channels.
        anchors: (w, h) anchor sizes in pixels at ``input_size``.
        anchor_masks: anchor indices per level, stride-32 level first.
        input_size: (height, width) the anchors refer to and training uses; recorded in the
            config, not enforced (any multiple of 32 runs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 20,
        phi: int = 0,
        attn: Any = None,
        attn_kwargs: dict | None = None,
        in_chans: int = 3,
        anchors: Sequence[Sequence[float]] = ANCHORS,
        anchor_masks: Sequence[Sequence[int]] = ANCHOR_MASKS,
        input_size: Sequence[int] = (416, 416),
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"YOLOv4Tiny: num_classes must be an integer ≥ 1, got {num_classes!r}")
        if attn is None and phi not in PHI_ATTENTION:
            raise ValueError(f"YOLOv4Tiny: phi must be one of 0-4, got {phi!r}")
        if len(anchor_masks) != 2 or len({len(m) for m in anchor_masks}) != 1:
            raise ValueError(
                f"YOLOv4Tiny: anchor_masks needs two levels of equal length, got {anchor_masks!r}"
            )
        if any(not 0 <= i < len(anchors) for m in anchor_masks for i in m):
            raise ValueError(
                f"YOLOv4Tiny: anchor_masks {anchor_masks!r} index outside the "
                f"{len(anchors)} anchors"
            )
        self.num_classes = num_classes
        self.anchors = [tuple(float(v) for v in a) for a in anchors]
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.strides = list(STRIDES)
        self.num_anchors = len(anchor_masks[0])
        out_ch = self.num_anchors * (5 + num_classes)

        name, options = (attn, {}) if attn is not None else PHI_ATTENTION[phi]
        options = {**options, **(attn_kwargs or {})}
        self.backbone = CSPDarknet53Tiny(in_chans)
        self.conv_p5 = ConvBNLeaky(512, 256, 1)
        self.head_p5 = _head(256, 512, out_ch)
        self.upsample = nn.Sequential(ConvBNLeaky(256, 128, 1), nn.Upsample(scale_factor=2.0))
        self.head_p4 = _head(384, 256, out_ch)
        self.feat1_attn = create_attention(name, 256, **options) or nn.Identity()
        self.feat2_attn = create_attention(name, 512, **options) or nn.Identity()
        self.upsample_attn = create_attention(name, 128, **options) or nn.Identity()

    def attention_modules(self) -> list[nn.Module]:
        """The three attention modules (empty without attention)."""
        sites = (self.feat1_attn, self.feat2_attn, self.upsample_attn)
        return [m for m in sites if not isinstance(m, nn.Identity)]

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"YOLOv4Tiny: expected a B×C×H×W tensor, got {got}")
        height, width = x.shape[-2:]
        if height % 32 or width % 32 or height == 0 or width == 0:
            raise ValueError(
                f"YOLOv4Tiny: input height and width must be positive multiples of 32, "
                f"got {height}×{width} (letterbox the image, e.g. to 416×416)"
            )

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feat1 B×256×H/16×W/16, feat2 B×512×H/32×W/32), after their attention."""
        self._check_input(x)
        feat1, feat2 = self.backbone(x)
        return self.feat1_attn(feat1), self.feat2_attn(feat2)

    def forward_head(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw outputs [stride 32, stride 16] from (feat1, feat2)."""
        feat1, feat2 = features
        p5 = self.conv_p5(feat2)
        up = self.upsample_attn(self.upsample(p5))
        return [self.head_p5(p5), self.head_p4(torch.cat([up, feat1], 1))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_head(self.forward_features(x))


@register_model("yolov4_tiny", family="yolo", task="detection", paper="arXiv 2004.10934")
def yolov4_tiny(**kwargs: Any) -> YOLOv4Tiny:
    """yolov4_tiny: CSPDarknet53-tiny YOLOv4-tiny, attention by ``phi`` or ``attn``."""
    signature = inspect.signature(YOLOv4Tiny)
    try:
        bound = signature.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"yolov4_tiny: {err}") from None
    bound.apply_defaults()
    model = YOLOv4Tiny(**bound.arguments)
    model.config = plain({"name": "yolov4_tiny", **bound.arguments})
    return model
