"""Segmentation inference as in DANet's evaluation (Fu et al., CVPR 2019, arXiv 1809.02983):
single scale, multi-scale + horizontal flip, and sliding windows for images larger than the
training crop.

All functions return class probabilities (softmax) B×C×H×W at the input size; the
multi-scale/flip result is the mean of the probabilities over every scale and flip, each
resized back to the input size (bilinear). Where the authors' code averages logits, this
averages probabilities: each view's vote is bounded, so one over-confident scale can't
dominate.

Sliding windows: square or rectangular ``crop_size`` windows with ``stride`` (default ⌈2/3 of
the crop⌉); the last window of a row or column is aligned with the image's border so every
pixel is covered without padding; an image smaller than the crop along a side is padded with
``pad_value`` (0: the mean colour after normalisation) to the crop size, and the padding is cut
off the result. Overlapping windows' probabilities are averaged per pixel.

The model's own train/eval state is kept: it runs in eval mode under ``torch.no_grad`` and is
put back afterwards. Models returning a dict (DANet with ``aux=True``) use its ``"out"``.

Example:
    >>> import torch
    >>> from attnlab.segment.infer import predict_labels
    >>> model = torch.nn.Conv2d(3, 2, 1)
    >>> predict_labels(model, torch.randn(2, 3, 45, 61), crop_size=32).shape
    torch.Size([2, 45, 61])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def _evaluating(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name}: expected a positive int or (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _check_images(name: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"{name}: expected images B×C×H×W, got {shape}")


def _probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    logits = model(images)
    if isinstance(logits, dict):
        logits = logits["out"]
    if logits.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"segment inference: the model returned {tuple(logits.shape)} for images "
            f"{tuple(images.shape)}; logits must have the images' height and width"
        )
    return logits.float().softmax(1)


def whole_image_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Probabilities B×C×H×W from one forward pass on the whole images."""
    _check_images("whole_image_probs", images)
    with _evaluating(model):
        return _probs(model, images)


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window starts along one side: every ``stride``, the last one flush with the end."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride))
    return [*starts, length - crop]


def sliding_window_probs(
    model: nn.Module,
    images: torch.Tensor,
    crop_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] | None = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Probabilities from overlapping ``crop_size`` windows, averaged where they overlap.

    Args:
        model: maps B×C×h×w images to logits at the same size.
        images: B×C×H×W, any size (padded to the crop where smaller).
        crop_size: window (height, width) or one side.
        stride: step between windows; default ⌈2/3 of the crop⌉ per side.
        pad_value: value of the padding of images smaller than the crop.
    """
    _check_images("sliding_window_probs", images)
    crop_h, crop_w = _pair("sliding_window_probs: crop_size", crop_size)
    if stride is None:
        stride = (math.ceil(crop_h * 2 / 3), math.ceil(crop_w * 2 / 3))
    stride_h, stride_w = _pair("sliding_window_probs: stride", stride)
    height, width = images.shape[-2:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h), value=pad_value)  # bottom and right
    full_h, full_w = padded.shape[-2:]
    total, count = None, padded.new_zeros(1, 1, full_h, full_w)
    with _evaluating(model):
        for top in _starts(full_h, crop_h, stride_h):
            for left in _starts(full_w, crop_w, stride_w):
                window = padded[..., top : top + crop_h, left : left + crop_w]
                probs = _probs(model, window)  # B×classes×crop_h×crop_w
                if total is None:
                    total = probs.new_zeros(probs.shape[0], probs.shape[1], full_h, full_w)
                total[..., top : top + crop_h, left : left + crop_w] += probs
                count[..., top : top + crop_h, left : left + crop_w] += 1
    return (total / count)[..., :height, :width]


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Probabilities averaged over scales and (optionally) horizontal flips.

    Args:
        model: maps B×C×h×w images to logits at the same size.
        images: B×C×H×W (normalised as in training).
        scales: image scale factors (DANet's multi-scale test: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
        flip: also run every scale on the mirrored image and mirror the result back.
        crop_size: if given, a scaled image larger than it along a side is run by sliding
            windows of this size (and smaller ones are padded to it); None: whole images.
        stride: sliding-window step (default ⌈2/3 of the crop⌉).
        pad_value: padding value for images smaller than the crop.

    Returns:
        B×C×H×W probabilities at the input size.
    """
    _check_images("predict_probs", images)
    if not scales or any(not isinstance(s, (int, float)) or s <= 0 for s in scales):
        raise ValueError(f"predict_probs: scales must be positive numbers, got {scales!r}")
    height, width = images.shape[-2:]
    total, views = None, 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images
        if size != (height, width):
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            if crop_size is None:
                probs = whole_image_probs(model, view)
            else:
                probs = sliding_window_probs(
                    model, view, crop_size, stride=stride, pad_value=pad_value
                )
            if mirrored:
                probs = probs.flip(-1)
            if size != (height, width):
                probs = F.interpolate(
                    probs, size=(height, width), mode="bilinear", align_corners=False
                )
            total = probs if total is None else total + probs
            views += 1
    return total / views


def predict_labels(model: nn.Module, images: torch.Tensor, **options) -> torch.Tensor:
    """Class labels B×H×W: the argmax of :func:`predict_probs` (same options)."""
    return predict_probs(model, images, **options).argmax(1)
