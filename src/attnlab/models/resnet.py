"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv
1512.03385) with attention placed as in the attention papers.

- ImageNet ResNet-18/34/50/101/152: torchvision's layout and state-dict names (conv1, bn1,
  layer1…layer4 with conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.0/.1, fc) and the "v1.5"
  stride on the 3×3 conv of the bottleneck, so torchvision-trained weights load by name.
- CIFAR ResNet-20/32/44/56/110: 3×3 stem, three stages of 16/32/64 channels, n = (depth−2)/6
  basic blocks each; the paper's parameter-free option-A shortcut by default (``shortcut="B"``
  for 1×1 projections).

Attention (``attn=``) sits inside every residual block after its last BN and before the
shortcut addition (SE, CBAM, ECA, CA papers); ``stage_attn=`` adds a module after stages
(BAM: after stages 1-3, not after the last). Per-stage options go in ``attn_stage_kwargs``,
e.g. the ECA authors' ResNet-50 kernels: ``[{"k_size": 3}, {"k_size": 5}, {"k_size": 5},
{"k_size": 7}]``. :func:`attnlab.kernels.fuse` can rewire these blocks so that the tail,
relu(attn(out) + shortcut), runs in the attention's kernel pass (same state-dict keys).

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("resnet50", attn="cbam", num_classes=10)
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    >>> [(f["name"], f["channels"], f["stride"]) for f in model.feature_info][-1]
    ('layer4', 2048, 32)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..plain import plain
from ..registry import create_attention, register_model


def conv3x3(
    in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False
    )


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class PadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample, then zero-pad the new channels."""

    def __init__(self, stride: int, out_channels: int) -> None:
        super().__init__()
        self.stride, self.out_channels = stride, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock(nn.Module):
    """Two 3×3 convs; attention after bn2, before the addition.

    ``conv_layer`` (e.g. a Selective Kernel unit, with its own norm and activation) replaces
    the first, strided 3×3 conv and its bn1.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        dilation: int = 1,
        first_dilation: int | None = None,
        attn_layer: Any = None,
        groups: int = 1,
        base_width: int = 64,
        conv_layer: Any = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock: groups and width_per_group must be 1 and 64 (bottleneck "
                f"options), got {groups} and {base_width}"
            )
        if conv_layer is not None:
            self.conv1 = conv_layer(inplanes, planes, stride, first_dilation or dilation)
            self.bn1 = nn.Identity()
        else:
            self.conv1 = conv3x3(inplanes, planes, stride, first_dilation or dilation)
            self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = (attn_layer(planes) if attn_layer else None) or nn.Identity()
        self.downsample = downsample
        self.stride = stride

    def attention_site(self) -> tuple[str, int]:
        """(norm whose output attention takes, its channels): the insertion protocol."""
        return "bn2", self.bn2.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.attn(out) + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (stride here: v1.5), 1×1 expand ×4; attention after bn3.

    Inner width ``int(planes · base_width / 64) · groups`` with a ``groups``-grouped 3×3 conv
    (torchvision's ResNeXt rule); ``conv_layer`` (e.g. a Selective Kernel unit, with its own
    norm and activation) replaces the 3×3 conv and its bn2.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        dilation: int = 1,
        first_dilation: int | None = None,
        attn_layer: Any = None,
        groups: int = 1,
        base_width: int = 64,
        conv_layer: Any = None,
    ) -> None:
        super().__init__()
        width = planes * self.expansion
        inner = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        if conv_layer is not None:
            self.conv2 = conv_layer(inner, inner, stride, first_dilation or dilation)
            self.bn2 = nn.Identity()
        else:
            self.conv2 = conv3x3(inner, inner, stride, first_dilation or dilation, groups)
            self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, width)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.attn = (attn_layer(width) if attn_layer else None) or nn.Identity()
        self.downsample = downsample
        self.stride = stride

    def attention_site(self) -> tuple[str, int]:
        """(norm whose output attention takes, its channels): the insertion protocol."""
        return "bn3", self.bn3.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.attn(out) + shortcut)


class ResNet(nn.Module):
    """A ResNet whose blocks and stage boundaries can hold attention.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max pool) or ``"cifar"`` (3×3 conv).
        widths: planes per stage (64…512 ImageNet, 16/32/64 CIFAR).
        attn: attention in every block (a registered name, a class, or None).
        attn_kwargs: options for every block's attention.
        attn_stage_kwargs: one dict per stage, merged over ``attn_kwargs``.
        attn_stages: 1-based stages whose blocks get ``attn`` (None: all). GCNet's best
            setting puts its block in stages c3–c5 only: ``attn_stages=(2, 3, 4)``.
        stage_attn: attention after stages (e.g. ``"bam"``), or None.
        stage_attn_kwargs: options for the stage attention.
        stage_attn_stages: 1-based stages followed by ``stage_attn`` (default: all but last).
        output_stride: 8 or 16 replaces the strides of the last stages by dilation (dense
            prediction); None keeps the classification strides.
        zero_init_last: zero the last BN of each block so blocks start as identities. Off by
            default, as in torchvision: it helps long large-batch ImageNet schedules (Goyal et
            al., arXiv 1706.02677) but slows short runs badly (benchmarks/short_run_defaults.py).
        shortcut: ``"B"`` (1×1 conv + BN where shapes change) or ``"A"`` (subsample + zero
            channels, no parameters; CIFAR paper).
        drop_rate: dropout before the classifier.
        groups: groups of the bottleneck's 3×3 conv (ResNeXt; 1 = ResNet).
        width_per_group: bottleneck width per group (64 = ResNet; ResNeXt-50 32×4d: 4).
        block_conv: ``"sk"`` replaces each block's 3×3 conv (the bottleneck's, or the basic
            block's first) by a Selective Kernel unit with G = ``groups`` (SKNet-50:
            ``block_conv="sk", groups=32, width_per_group=4``), or None.
        block_conv_kwargs: options of that unit (e.g. ``{"branches": 3}``).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        widths: Sequence[int] = (64, 128, 256, 512),
        attn: Any = None,
        attn_kwargs: dict | None = None,
        attn_stage_kwargs: Sequence[dict] | None = None,
        attn_stages: Sequence[int] | None = None,
        stage_attn: Any = None,
        stage_attn_kwargs: dict | None = None,
        stage_attn_stages: Sequence[int] | None = None,
        output_stride: int | None = None,
        zero_init_last: bool = False,
        shortcut: str = "B",
        drop_rate: float = 0.0,
        groups: int = 1,
        width_per_group: int = 64,
        block_conv: str | None = None,
        block_conv_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(layers)
        if block_conv not in (None, "sk"):
            raise ValueError(f"ResNet: block_conv must be None or 'sk', got {block_conv!r}")
        self._block_options = {"groups": groups, "base_width": width_per_group}
        if block_conv == "sk":
            sk_options = {"groups": groups, **(block_conv_kwargs or {})}
            self._block_options["conv_layer"] = partial(_sk_conv, sk_options)
        if len(widths) != num_stages:
            raise ValueError(f"ResNet: {num_stages} stages but {len(widths)} widths {widths}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"ResNet: shortcut must be 'A' or 'B', got {shortcut!r}")
        if attn_stage_kwargs is not None and len(attn_stage_kwargs) != num_stages:
            raise ValueError(
                f"ResNet: attn_stage_kwargs needs one dict per stage ({num_stages}), "
                f"got {len(attn_stage_kwargs)}"
            )
        if attn_stages is not None and not all(
            isinstance(s, int) and 1 <= s <= num_stages for s in attn_stages
        ):
            raise ValueError(
                f"ResNet: attn_stages must hold stage numbers in 1…{num_stages}, "
                f"got {attn_stages!r}"
            )
        stem_stride = 4 if stem == "imagenet" else 1
        if output_stride is not None and (stem != "imagenet" or output_stride not in (8, 16, 32)):
            raise ValueError(
                f"ResNet: output_stride must be None, or 8, 16 or 32 with the ImageNet stem; "
                f"got {output_stride!r} with stem {stem!r}"
            )
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, 2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        else:
            self.conv1 = conv3x3(in_chans, widths[0])
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)

        self.inplanes, net_stride, dilation = widths[0], stem_stride, 1
        self.feature_info: list[dict[str, Any]] = []
        for i, (planes, depth) in enumerate(zip(widths, layers, strict=True)):
            stride, previous_dilation = (1 if i == 0 else 2), dilation
            if output_stride is not None and stride > 1 and net_stride >= output_stride:
                dilation, stride = dilation * stride, 1
            net_stride *= stride
            kwargs = {**(attn_kwargs or {}), **(attn_stage_kwargs[i] if attn_stage_kwargs else {})}
            in_stage = attn_stages is None or i + 1 in attn_stages
            attn_layer = partial(create_attention, attn, **kwargs) if attn and in_stage else None
            layer = self._make_layer(
                block, planes, depth, stride, dilation, previous_dilation, attn_layer, shortcut
            )
            self.add_module(f"layer{i + 1}", layer)
            self.feature_info.append(
                {"name": f"layer{i + 1}", "channels": self.inplanes, "stride": net_stride}
            )
        self.num_features = self.inplanes

        self.stage_attn = nn.ModuleDict()
        if stage_attn:
            stages = stage_attn_stages or range(1, num_stages)
            for stage in stages:
                if not 1 <= stage <= num_stages:
                    raise ValueError(
                        f"ResNet: stage_attn_stages has {stage}, not in 1…{num_stages}"
                    )
                channels = self.feature_info[stage - 1]["channels"]
                module = create_attention(stage_attn, channels, **(stage_attn_kwargs or {}))
                self.stage_attn[f"layer{stage}"] = module
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self._init_weights(zero_init_last)

    def _make_layer(self, block, planes, depth, stride, dilation, previous_dilation, attn_layer,
                    shortcut) -> nn.Sequential:  # fmt: skip
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            if shortcut == "A":
                downsample = PadShortcut(stride, out_channels)
            else:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, out_channels, stride), nn.BatchNorm2d(out_channels)
                )
        blocks = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                dilation=dilation,
                first_dilation=previous_dilation,
                attn_layer=attn_layer,
                **self._block_options,
            )
        ]
        self.inplanes = out_channels
        for _ in range(1, depth):
            blocks.append(
                block(
                    out_channels,
                    planes,
                    dilation=dilation,
                    attn_layer=attn_layer,
                    **self._block_options,
                )
            )
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_last: bool) -> None:
        # Attention modules keep their own initialisation (e.g. CBAM's zero-init spatial BN).
        attention = {id(m) for a in self.attention_modules() for m in a.modules()}
        for m in self.modules():
            if id(m) in attention:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(getattr(m, m.attention_site()[0]).weight)

    def attention_modules(self) -> list[nn.Module]:
        """The attention modules inside blocks and between stages."""
        inside = [
            m.attn
            for m in self.modules()
            if isinstance(m, (BasicBlock, Bottleneck)) and not isinstance(m.attn, nn.Identity)
        ]
        return inside + list(self.stage_attn.values())

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every stage (after its stage attention), as listed in ``feature_info``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for info in self.feature_info:
            x = getattr(self, info["name"])(x)
            if info["name"] in self.stage_attn:
                x = self.stage_attn[info["name"]](x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # global average pool as a mean: exports cleanly
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _sk_conv(options: dict, in_ch: int, out_ch: int, stride: int, dilation: int) -> nn.Module:
    """A Selective Kernel unit in place of a block's 3×3 conv."""
    return create_attention(
        "sk", in_ch, out_channels=out_ch, stride=stride, dilation=dilation, **options
    )


def _build(name: str, block, layers, defaults: dict, kwargs: dict) -> ResNet:
    """Builds a ResNet and records the full resolved config (name + every option)."""
    options = {**defaults, **kwargs}
    signature = inspect.signature(ResNet)
    try:
        bound = signature.bind(block, layers, **options)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    bound.apply_defaults()
    model = ResNet(*bound.args, **bound.kwargs)
    config = {k: v for k, v in bound.arguments.items() if k not in ("block", "layers")}
    model.config = plain({"name": name, **config})  # equals its JSON/YAML round trip
    return model


_IMAGENET = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
_CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
_CIFAR_DEFAULTS = {"num_classes": 10, "stem": "cifar", "widths": (16, 32, 64), "shortcut": "A"}


def _register_imagenet(name: str, block, layers) -> None:
    def factory(**kwargs: Any) -> ResNet:
        return _build(name, block, layers, {}, kwargs)

    factory.__doc__ = f"{name}: ImageNet {block.__name__} ResNet, stages {layers}."
    register_model(
        name, family="resnet", task="classification", dataset="imagenet", paper="arXiv 1512.03385"
    )(factory)


def _register_cifar(name: str, depth: int) -> None:
    n = (depth - 2) // 6

    def factory(**kwargs: Any) -> ResNet:
        return _build(name, BasicBlock, (n, n, n), _CIFAR_DEFAULTS, kwargs)

    factory.__doc__ = f"{name}: CIFAR ResNet, 3 stages × {n} basic blocks of 16/32/64 channels."
    register_model(
        name, family="resnet", task="classification", dataset="cifar", paper="arXiv 1512.03385"
    )(factory)


for _name, (_block, _layers) in _IMAGENET.items():
    _register_imagenet(_name, _block, _layers)
for _name, _depth in _CIFAR_DEPTHS.items():
    _register_cifar(_name, _depth)
