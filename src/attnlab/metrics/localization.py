"""Localisation scores of saliency and attention maps against object masks.

Two scores of how well a map points at the object (Zhang et al., "Top-down Neural Attention by
Excitation Backprop", ECCV 2016, arXiv 1608.00507, for the pointing game; the energy ratio as in
Score-CAM, Wang et al., CVPR-W 2020, arXiv 1910.01279):

- **pointing game**: a hit when the map's maximum lies inside the object mask;
- **energy in mask**: the share of the map's total mass that falls inside the mask.

Conventions (the same for both):

- Maps are B×1×h×w or B×h×w and are upsampled bilinearly (``align_corners=False``) to the mask's
  H×W. They are assumed non-negative (Grad-CAM is ReLU'd; attention maps are sigmoid or softmax
  outputs); negative values are clamped to 0 before scoring.
- Masks are B×H×W; any non-zero value is object.
- Ties: every pixel within a relative 1e-6 of the maximum is a maximum, and the pointing score
  is the fraction of those inside the mask, i.e. the expected hit of breaking the tie uniformly
  at random. A constant map (all-zero included) therefore scores the mask's area fraction —
  chance level — and so does an all-zero map's energy (it is read as uniform).
- Images whose mask is empty score NaN; means (``reduction="mean"``) skip NaNs.

:func:`attnlab.viz.localization_score` runs both scores for Grad-CAM and for every spatial
attention map of a model on scenes with masks (the synthetic scenes).

Example:
    >>> import torch
    >>> from attnlab.metrics import energy_in_mask, pointing_game
    >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    >>> masks[:, :2, :2] = True  # the object: the top-left quarter
    >>> maps = torch.zeros(2, 1, 4, 4)
    >>> maps[0, 0, 0, 0] = 1.0  # peak inside
    >>> maps[1, 0, 3, 3] = 1.0  # peak outside
    >>> pointing_game(maps, masks).tolist()
    [1.0, 0.0]
    >>> energy_in_mask(torch.ones(1, 1, 4, 4), masks[:1]).tolist()
    [0.25]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_TIE_RTOL = 1e-6


def _prepare(maps: Tensor, masks: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """(maps as B×H×W float, clamped ≥ 0, at the mask size; masks as B×H×W bool)."""
    if maps.dim() == 4:
        if maps.shape[1] != 1:
            raise ValueError(f"{who}: maps must be B×1×h×w or B×h×w, got {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3 or masks.dim() != 3:
        raise ValueError(
            f"{who}: maps must be B×1×h×w or B×h×w and masks B×H×W, got "
            f"{tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"{who}: {maps.shape[0]} maps but {masks.shape[0]} masks")
    maps = maps.detach().float()
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]  # fmt: skip
    return maps.clamp(min=0), masks.to(maps.device) != 0


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.nanmean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def pointing_game(maps: Tensor, masks: Tensor, *, reduction: str = "none") -> Tensor:
    """Pointing-game hits: 1 where the map's maximum lies inside the mask, else 0.

    Args:
        maps: B×1×h×w or B×h×w, non-negative (see the module docstring for the conventions).
        masks: B×H×W, non-zero on the object.
        reduction: ``"none"`` (per image, B) or ``"mean"`` (a scalar, NaNs skipped).

    Returns:
        Per-image scores in [0, 1] (fractional only for tied maxima), NaN for empty masks.
    """
    maps, masks = _prepare(maps, masks, "pointing_game")
    flat, inside = maps.flatten(1), masks.flatten(1)  # B×HW
    peak = flat.amax(1, keepdim=True)
    maximal = flat >= peak - _TIE_RTOL * peak.abs()  # B×HW, ties included
    hits = (maximal & inside).sum(1) / maximal.sum(1)
    return _reduce(torch.where(inside.any(1), hits.float(), math.nan), reduction)


def energy_in_mask(maps: Tensor, masks: Tensor, *, reduction: str = "none") -> Tensor:
    """Share of each map's mass inside the mask: Σ map·mask / Σ map.

    Args:
        maps: B×1×h×w or B×h×w, non-negative (see the module docstring for the conventions).
        masks: B×H×W, non-zero on the object.
        reduction: ``"none"`` (per image, B) or ``"mean"`` (a scalar, NaNs skipped).

    Returns:
        Per-image ratios in [0, 1]; an all-zero map scores the mask's area fraction; NaN for
        empty masks.
    """
    maps, masks = _prepare(maps, masks, "energy_in_mask")
    flat, inside = maps.flatten(1).double(), masks.flatten(1)  # B×HW
    total = flat.sum(1)
    ratio = torch.where(
        total > 0, (flat * inside).sum(1) / total.clamp(min=1e-300), inside.double().mean(1)
    )
    return _reduce(torch.where(inside.any(1), ratio, math.nan).float(), reduction)
