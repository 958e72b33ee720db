"""Detection augmentations on the joint transform stack (torchvision.transforms.v2).

The augmentations of YOLOv4 (Bochkovskiy et al., arXiv 2004.10934, section 3.3, and the
reference repositories): letterbox, random scale/translate, horizontal flip, HSV jitter (no
mosaic). Each is a :class:`~attnlab.data.joint.JointTransform`, so one random draw moves the
image, its ``tv_tensors.BoundingBoxes`` (and any ``tv_tensors.Mask``) together; box geometry
is torchvision's own (``resize``, ``pad``, ``crop``, ``horizontal_flip`` of boxes, which clamp
to the canvas). :func:`sanitize_boxes` then drops the boxes left narrower or lower than
``min_size`` pixels, with their labels (``v2.SanitizeBoundingBoxes``).

The datasets of :mod:`attnlab.data.detection` call a transform on ``(image, targets)``: a
float image 3×H×W and targets N×5 (class, x1, y1, x2, y2 in pixel edges).
:class:`DetectionTransform` adapts a list of these transforms to that call.

HSV jitter is ours, not ``v2.ColorJitter``: YOLO's jitter multiplies the saturation and value
channels of HSV (hue kept, a gain on V scales R, G and B alike until V reaches 1), whereas
ColorJitter blends saturation towards the luma grey and clamps brightness per RGB channel.

Example:
    >>> import torch
    >>> from attnlab.data.detection_transforms import DetectionTransform, Letterbox
    >>> letterbox = DetectionTransform([Letterbox(96)])
    >>> image, targets = torch.rand(3, 48, 64), torch.tensor([[1.0, 10, 8, 30, 40]])
    >>> out, boxes = letterbox(image, targets)   # ×1.5, then 12 rows of grey above and below
    >>> tuple(out.shape), boxes.tolist()
    ((3, 96, 96), [[1.0, 15.0, 24.0, 45.0, 72.0]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .joint import (
    IGNORE_INDEX,
    JointTransform,
    RandomHorizontalFlip,
    check_image,
    is_image,
    sample_size,
)


def _place(inpt: Any, size: tuple[int, int], canvas: tuple[int, int], offset, fill: float) -> Any:
    """Resizes ``inpt`` to ``size`` and places it on a ``canvas`` (height, width) at
    ``offset`` (x, y), which may be negative; uncovered pixels are ``fill`` (masks: the ignore
    label). Boxes move with the pixels and are clamped to the canvas."""
    is_mask = isinstance(inpt, tv_tensors.Mask)
    if not (is_image(inpt) or is_mask or isinstance(inpt, tv_tensors.BoundingBoxes)):
        return inpt
    new_h, new_w = size
    height, width = canvas
    ox, oy = offset
    plain = type(inpt) is torch.Tensor
    out = tv_tensors.Image(inpt) if plain else inpt  # the v2 kernels dispatch on the type
    # Bilinear images (antialiased: it acts only where they shrink), nearest masks, boxes
    # scaled per axis by the new side over the old.
    out = TF.resize(out, [new_h, new_w], antialias=True)
    pads = [max(ox, 0), max(oy, 0), max(width - ox - new_w, 0), max(height - oy - new_h, 0)]
    if any(pads):
        out = TF.pad(out, pads, fill=IGNORE_INDEX if is_mask else fill)
    out = TF.crop(out, max(-oy, 0), max(-ox, 0), height, width)
    return out.as_subclass(torch.Tensor) if plain else out


class Letterbox(JointTransform):
    """Resizes to ``size`` keeping the aspect ratio and pads the rest with ``fill`` (grey).

    The scale is min(out_h / H, out_w / W), the resized side round(side · scale), the padding
    split in two (the extra pixel, if any, at the bottom/right): the geometry of
    :func:`attnlab.detect.boxes.letterbox`, which inference uses. Boxes scale by the resized
    side over the input side per axis (the pixels' own factor), then shift by the padding.

    Args:
        size: output side, or (height, width).
        fill: padding value (0.5: the reference repositories' grey 128/255, nearly).
    """

    def __init__(self, size: int | Sequence[int], fill: float = 0.5) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or not all(isinstance(s, int) and s > 0 for s in self.size):
            raise ValueError(
                f"Letterbox: size must be a positive int or (height, width), got {size!r}"
            )
        self.fill = fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = sample_size(flat_inputs)
        out_h, out_w = self.size
        scale = min(out_h / height, out_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        return {"size": (new_h, new_w), "offset": ((out_w - new_w) // 2, (out_h - new_h) // 2)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if is_image(inpt):
            check_image("Letterbox", inpt)
        return _place(inpt, params["size"], self.size, params["offset"], self.fill)


class RandomScaleTranslate(JointTransform):
    """Rescales by a random factor and shifts by a random offset, keeping the input's size:
    the scaled sample is centred, moved by up to ± ``translate`` of each side, and uncovered
    pixels are ``fill`` grey. Boxes move with the pixels and are clamped to the image (drop
    the degenerate ones with :func:`sanitize_boxes`).

    Args:
        scale: range of the scale factor (uniform).
        translate: largest shift as a fraction of the image side (each axis, uniform).
        fill: value of uncovered pixels.
    """

    def __init__(self, scale: Sequence[float] = (0.5, 1.5), translate: float = 0.2,
                 fill: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomScaleTranslate: need 0 < low <= high, got scale={scale!r}")
        if not 0 <= translate <= 1:
            raise ValueError(
                f"RandomScaleTranslate: translate must be in [0, 1], got {translate!r}"
            )
        self.scale, self.translate, self.fill = tuple(scale), translate, fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = sample_size(flat_inputs)
        s = float(torch.empty(()).uniform_(*self.scale))
        new_h, new_w = max(1, round(height * s)), max(1, round(width * s))
        shift = (torch.rand(2) * 2 - 1) * self.translate  # uniform in ±translate
        ox = round((width - new_w) / 2 + float(shift[0]) * width)
        oy = round((height - new_h) / 2 + float(shift[1]) * height)
        return {"size": (new_h, new_w), "canvas": (height, width), "offset": (ox, oy)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if is_image(inpt):
            check_image("RandomScaleTranslate", inpt)
        return _place(inpt, params["size"], params["canvas"], params["offset"], self.fill)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """3×H×W RGB in [0, 1] → HSV, hue in [0, 1)."""
    r, g, b = image.unbind(0)
    value, argmax = image.max(0)
    delta = value - image.min(0).values
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    d = delta.clamp(min=1e-12)
    hue = torch.stack([((g - b) / d) % 6, (b - r) / d + 2, (r - g) / d + 4])  # 3×H×W
    hue = hue.gather(0, argmax[None])[0] / 6  # the sector of the largest channel, H×W
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue % 1.0, saturation, value])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """3×H×W HSV (hue in [0, 1)) → RGB."""
    h, s, v = hsv.unbind(0)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device)[:, None, None] + h * 6) % 6  # 3×H×W
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


class HSVJitter(JointTransform):
    """Random hue shift and saturation/value gains of images (YOLOv5's hsv_h, hsv_s, hsv_v).

    Hue moves by a uniform offset in ± ``hue`` of the colour circle; saturation and value are
    multiplied by uniform gains in [1 − s, 1 + s] and [1 − v, 1 + v], clamped to [0, 1].
    Boxes and masks are unchanged.
    """

    def __init__(self, hue: float = 0.015, saturation: float = 0.7, value: float = 0.4) -> None:
        super().__init__()
        self.hue, self.saturation, self.value = hue, saturation, value

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gains": (torch.rand(3) * 2 - 1).tolist()}  # uniform in [-1, 1]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not is_image(inpt):
            return inpt
        check_image("HSVJitter", inpt)
        hue, saturation, value = params["gains"]
        hsv = rgb_to_hsv(inpt.as_subclass(torch.Tensor).clamp(0, 1))
        hsv[0] = (hsv[0] + hue * self.hue) % 1.0
        hsv[1] = (hsv[1] * (1 + saturation * self.saturation)).clamp(0, 1)
        hsv[2] = (hsv[2] * (1 + value * self.value)).clamp(0, 1)
        rgb = hsv_to_rgb(hsv)
        return tv_tensors.wrap(rgb, like=inpt) if isinstance(inpt, tv_tensors.Image) else rgb


def sanitize_boxes(min_size: float = 2.0) -> v2.Compose:
    """Clamps boxes to the canvas and drops those narrower or lower than ``min_size`` pixels,
    with their labels (the sample's ``"labels"`` entry).

    ``min_size`` ≥ 1: ``v2.SanitizeBoundingBoxes`` also drops boxes under one square pixel
    (an area min_size² implies).
    """
    if not min_size >= 1:
        raise ValueError(f"sanitize_boxes: min_size must be >= 1 pixel, got {min_size!r}")
    area = min_size * min_size
    return v2.Compose(
        [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_size, min_area=area)]
    )


class DetectionTransform:
    """Runs joint transforms on a detection pair: ``(image 3×H×W, targets N×5)`` in and out.

    The pair becomes a sample ``{"image": tv_tensors.Image, "boxes": tv_tensors.BoundingBoxes
    (XYXY, canvas H×W), "labels": N}`` for ``v2.Compose(transforms)``, and back.

    Args:
        transforms: v2 transforms (this module's, :mod:`attnlab.data.joint`'s, torchvision's).
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)
        self.pipeline = v2.Compose(self.transforms)

    def __call__(self, image: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if image.dim() != 3 or targets.dim() != 2 or targets.shape[1] != 5:
            raise ValueError(
                f"DetectionTransform: expected an image C×H×W and targets N×5, got shapes "
                f"{tuple(image.shape)} and {tuple(targets.shape)}"
            )
        boxes = tv_tensors.BoundingBoxes(
            targets[:, 1:], format="XYXY", canvas_size=tuple(image.shape[-2:])
        )
        sample = {"image": tv_tensors.Image(image), "boxes": boxes, "labels": targets[:, 0]}
        out = self.pipeline(sample)
        boxes = out["boxes"].as_subclass(torch.Tensor).to(targets.dtype)
        labels = out["labels"].as_subclass(torch.Tensor).to(targets.dtype)
        return out["image"].as_subclass(torch.Tensor), torch.cat([labels[:, None], boxes], 1)

    def __repr__(self) -> str:
        return f"DetectionTransform({self.transforms!r})"


def train_transform(
    size: int,
    *,
    scale: Sequence[float] = (0.5, 1.5),
    translate: float = 0.2,
    flip: float = 0.5,
    hsv: bool = True,
) -> DetectionTransform:
    """The default training augmentation: letterbox, scale/translate, flip, HSV jitter.

    Boxes left under 1 pixel by the letterbox, or under 2 pixels by scale/translate, are
    dropped.
    """
    steps: list[Callable] = [Letterbox(size), sanitize_boxes(1.0)]
    steps += [RandomScaleTranslate(scale, translate), sanitize_boxes(2.0)]
    steps.append(RandomHorizontalFlip(flip))
    if hsv:
        steps.append(HSVJitter())
    return DetectionTransform(steps)


def eval_transform(size: int) -> DetectionTransform:
    """Letterbox only (boxes under 1 pixel dropped)."""
    return DetectionTransform([Letterbox(size), sanitize_boxes(1.0)])
