"""Shared primitives for the attention layers: widths, input checks, pooling.

Everything here is small and shape-agnostic so that every module applies the same rules:
one helper decides the hidden width, one validates inputs, and global pooling is written as
``mean``/``amax`` over the spatial dims (exports cleanly, deterministic backward, unlike
adaptive max pooling on CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# Every batch-normalising layer of torch.nn, named by its public classes (their common base
# class is private).
BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None) -> int:
    """Rounds a width to a multiple of ``divisor``, never below ``min_value``.

    With ``divisor == 1`` the value is floored, as the authors' code does (``C // r``); with a
    larger divisor it is rounded to the nearest multiple and bumped up if that loses more than
    10% (the MobileNet convention, as timm's ``make_divisible``).

    Args:
        value: the width before rounding (e.g. ``C * rd_ratio``).
        divisor: the multiple to round to.
        min_value: lower bound; None means ``divisor``, so a rounded width is never below one
            multiple of the divisor (``make_divisible(1.5, 8) == 8``).

    Example:
        >>> make_divisible(24 / 16, 8), make_divisible(16 / 16, 8), make_divisible(37, 8)
        (8, 8, 40)
    """
    if divisor < 1:
        raise ValueError(f"make_divisible: divisor must be >= 1, got {divisor}")
    if min_value is None:
        min_value = divisor
    if divisor == 1:
        # The small epsilon keeps e.g. 48 * (1/3) = 15.999... from flooring to 15.
        return max(min_value, int(math.floor(value + 1e-6)))
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def reduced_channels(
    owner: str,
    channels: int,
    rd_ratio: float,
    rd_channels: int | None = None,
    rd_divisor: int = 1,
    min_channels: int | None = None,
) -> int:
    """Width of a bottleneck layer: ``rd_channels`` if given, else ``channels * rd_ratio``.

    Args:
        owner: module name used in error messages.
        channels: input channels C.
        rd_ratio: reduction ratio as a fraction (1/r in the papers).
        rd_channels: explicit width; overrides ``rd_ratio``.
        rd_divisor: round the width to a multiple of this (1 = floor, as the authors do).
        min_channels: lower bound (e.g. 8 for Coordinate Attention); None means
            ``rd_divisor`` (1 when flooring).
    """
    if rd_channels is not None:
        if not isinstance(rd_channels, int) or isinstance(rd_channels, bool) or rd_channels < 1:
            raise ValueError(f"{owner}: rd_channels must be a positive int, got {rd_channels!r}")
        return rd_channels
    if not isinstance(rd_ratio, (int, float)) or isinstance(rd_ratio, bool) or rd_ratio <= 0:
        raise ValueError(f"{owner}: rd_ratio must be a positive number, got {rd_ratio!r}")
    return make_divisible(channels * rd_ratio, rd_divisor, min_channels)


def timm_reduced_channels(
    owner: str,
    channels: int,
    rd_ratio: float,
    rd_channels: int | None = None,
    rd_divisor: int = 8,
) -> int:
    """The hidden width as timm's SE and CBAM modules compute it (their presets here).

    timm calls its ``make_divisible`` with ``round_limit=0``: C·ratio rounded half up to a
    multiple of ``rd_divisor``, at least ``rd_divisor``, never bumped up. With divisor 8,
    C = 190 and ratio 1/16 that is 8, where :func:`reduced_channels` gives 16 (divisor 8) or
    11 (floor); with divisor 1 it rounds to the nearest integer (C = 24: 2, floor: 1).

    Example:
        >>> timm_reduced_channels("SE", 190, 1 / 16)
        8
        >>> timm_reduced_channels("CBAM", 24, 1 / 16, rd_divisor=1)
        2
    """
    width = reduced_channels(owner, channels, rd_ratio, rd_channels)  # validates the options
    if rd_channels is not None:
        return width
    if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
        raise ValueError(f"{owner}: rd_divisor must be a positive int, got {rd_divisor!r}")
    rounded = int(channels * rd_ratio + rd_divisor / 2) // rd_divisor * rd_divisor
    return max(rd_divisor, rounded)


def safe_sqrt(var: torch.Tensor) -> torch.Tensor:
    """sqrt(var) for a variance, with gradient 0 (not inf · 0 = NaN) where var is 0.

    A standard deviation over a constant channel or a 1×1 map is 0; the plain square root's
    backward there divides by 0. Values are unchanged.

    Example:
        >>> v = torch.tensor([0.0, 4.0], requires_grad=True)
        >>> safe_sqrt(v).sum().backward()
        >>> v.grad
        tensor([0.0000, 0.2500])
    """
    positive = var > 0
    root = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return torch.where(positive, root, torch.zeros_like(var))


def check_channels(owner: str, channels: Any) -> int:
    """Validates the ``channels`` constructor argument."""
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise TypeError(f"{owner}: channels must be an int, got {type(channels).__name__}")
    if channels < 1:
        raise ValueError(f"{owner}: channels must be >= 1, got {channels}")
    return channels


def check_odd_kernel(owner: str, name: str, kernel_size: Any) -> int:
    """Validates an odd, positive kernel size (odd keeps 'same' padding symmetric)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{owner}: {name} must be a positive odd int, got {kernel_size}")
    return kernel_size


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Validates a string option against its allowed values."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_input(module: nn.Module, x: Any) -> None:
    """Validates a B×C×H×W floating-point input for an attention module.

    Raises TypeError for a non-tensor or a non-floating dtype, ValueError for a wrong rank, an
    empty batch or map, or a channel count other than ``module.channels``. Only Python checks
    on sizes: free in eager mode, and guards (not graph breaks) under ``torch.compile``.
    """
    owner = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: expected a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{owner}: expected a 4-D input (batch, channels, height, width), "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"{owner}: expected a floating-point input, got dtype {x.dtype}")
    if x.shape[1] != module.channels:
        raise ValueError(
            f"{owner}: expected {module.channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(
            f"{owner}: expected a non-empty batch and map (batch, height, width >= 1), "
            f"got input shape {tuple(x.shape)}"
        )


def check_batch_statistics(owner: str, norm: nn.Module, count: int, advice: str) -> None:
    """Raises a clear ValueError where a BatchNorm would see one value per channel.

    BatchNorm in training mode (or without running statistics) normalises by the batch
    variance, which is undefined for a single value; PyTorch's own message for this does not
    say which layer or what to do.

    Args:
        owner: module name for the message.
        norm: the normalisation layer about to run.
        count: values per channel it will see (e.g. batch size, or batch·H·W).
        advice: which option avoids the problem.
    """
    if (
        count == 1
        and isinstance(norm, BATCH_NORMS)
        and (norm.training or not norm.track_running_stats)
    ):
        raise ValueError(
            f"{owner}: {type(norm).__name__} in training mode needs more than one value per "
            f"channel, but this input gives it exactly 1; {advice}"
        )


def norm_or_identity(norm_layer: Any, num_features: int) -> nn.Module:
    """Instantiates ``norm_layer(num_features)``, or an identity when it is None."""
    return nn.Identity() if norm_layer is None else norm_layer(num_features)


def resolve_preset(
    owner: str, presets: Mapping[str, Mapping[str, Any]], preset: str, **given: Any
) -> dict[str, Any]:
    """Merges explicit keyword arguments over a named preset.

    Arguments left as ``None`` take the preset's value; anything given explicitly wins.
    """
    if preset not in presets:
        raise ValueError(f"{owner}: preset must be one of {list(presets)}, got {preset!r}")
    resolved = dict(presets[preset])
    resolved.update({k: v for k, v in given.items() if v is not None})
    return resolved
