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

:func:`localization_score` runs both scores for Grad-CAM and for every spatial attention map
of a model on scenes with masks (the synthetic scenes).

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
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _scene_batches(
    data: Any, count: int | None, batch_size: int, normalize: Sequence[Sequence[float]] | None
) -> Iterable[tuple[Tensor, Tensor | None, Tensor]]:
    """(images, labels or None, object masks) batches from scenes or an iterable of batches."""
    if hasattr(data, "scene"):  # SyntheticScenes: the target object's mask, from its label
        total = len(data) if count is None else min(count, len(data))
        mean, std = (None, None) if normalize is None else (
            torch.tensor(normalize[0]).view(1, -1, 1, 1),
            torch.tensor(normalize[1]).view(1, -1, 1, 1),
        )  # fmt: skip
        for start in range(0, total, batch_size):
            scenes = [data.scene(i) for i in range(start, min(start + batch_size, total))]
            images = torch.stack([s.image for s in scenes])  # B×3×S×S in [0, 1]
            if mean is not None:
                images = (images - mean) / std
            labels = torch.tensor([s.label for s in scenes])
            masks = torch.stack([s.mask == s.label + 1 for s in scenes])  # B×S×S
            yield images, labels, masks
        return
    seen = 0
    for batch in data:  # (images, masks) or (images, labels, masks), images ready for the model
        if len(batch) == 2:
            images, labels, masks = batch[0], None, batch[1]
        elif len(batch) == 3:
            images, labels, masks = batch
        else:
            raise ValueError(
                "localization_score: batches must be (images, masks) or (images, labels, masks)"
            )
        if count is not None and seen + len(images) > count:
            keep = count - seen
            images, masks = images[:keep], masks[:keep]
            labels = None if labels is None else labels[:keep]
        seen += len(images)
        yield images, labels, masks
        if count is not None and seen >= count:
            return


def localization_score(
    model: nn.Module,
    data: Any,
    *,
    count: int | None = None,
    batch_size: int = 64,
    normalize: Sequence[Sequence[float]] | None = None,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    target: str = "label",
    attention: bool = True,
) -> dict[str, Any]:
    """Pointing game and energy in mask of Grad-CAM and of the model's spatial attention maps.

    Args:
        model: a classifier (put in eval mode here).
        data: a :class:`~attnlab.data.synthetic.SyntheticScenes` (the target object's mask is
            used; images are normalised with ``normalize``), or an iterable of
            ``(images, masks)`` / ``(images, labels, masks)`` batches ready for the model
            (e.g. a DataLoader).
        count: score at most this many images (default: all).
        batch_size: scenes per forward pass (scenes only).
        normalize: ``(mean, std)`` per channel applied to the scenes' [0, 1] images.
        layer: Grad-CAM layer, a module name or module (default: the last stage).
        method: ``"gradcam"`` or ``"gradcam++"``.
        target: Grad-CAM class: ``"label"`` (the true class where known, else the predicted)
            or ``"predicted"``.
        attention: also score every spatial attention map (see
            :func:`attnlab.viz.maps.spatial_maps`).

    Returns:
        ``{"count": n, "gradcam": {"pointing", "energy"}, "attention": {"pointing", "energy",
        "modules": {module: {"kind", "pointing", "energy"}}} or None}``: means over images
        (and, for ``"attention"``'s top-level values, over modules); ``None`` where the model
        has no spatial attention maps.
    """
    from ..viz.gradcam import grad_cam
    from ..viz.maps import collect_attention, spatial_maps

    if target not in ("label", "predicted"):
        raise ValueError(
            f"localization_score: target must be 'label' or 'predicted', got {target!r}"
        )
    model.eval()
    device = next(model.parameters()).device
    cam_scores: dict[str, list[Tensor]] = {"pointing": [], "energy": []}
    module_scores: dict[str, dict[str, Any]] = {}
    n = 0
    for images, labels, masks in _scene_batches(data, count, batch_size, normalize):
        images = images.to(device)
        classes = labels if target == "label" else None
        result = grad_cam(model, images, layer=layer, target=classes, method=method)
        cam_scores["pointing"].append(pointing_game(result.maps, masks))
        cam_scores["energy"].append(energy_in_mask(result.maps, masks))
        n += len(images)
        if not attention:
            continue
        _, entries = collect_attention(model, images)
        for name, (kind, maps) in spatial_maps(entries).items():
            scores = module_scores.setdefault(name, {"kind": kind, "pointing": [], "energy": []})
            scores["pointing"].append(pointing_game(maps, masks))
            scores["energy"].append(energy_in_mask(maps, masks))
    if n == 0:
        raise ValueError("localization_score: no images to score")

    def mean(values: list[Tensor]) -> float:
        return float(torch.cat(values).nanmean())

    summary: dict[str, Any] = {
        "count": n,
        "gradcam": {"pointing": mean(cam_scores["pointing"]), "energy": mean(cam_scores["energy"])},
        "attention": None,
    }
    if module_scores:
        modules = {
            name: {"kind": s["kind"], "pointing": mean(s["pointing"]), "energy": mean(s["energy"])}
            for name, s in module_scores.items()
        }
        summary["attention"] = {
            key: sum(m[key] for m in modules.values()) / len(modules)
            for key in ("pointing", "energy")
        }
        summary["attention"]["modules"] = modules
    return summary
