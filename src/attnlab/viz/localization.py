"""Localisation scores of Grad-CAM and of a model's spatial attention maps on scenes with
object masks: the pointing game (Zhang et al., "Top-down Neural Attention by Excitation
Backprop", ECCV 2016, arXiv 1608.00507) and the energy in the mask (as in Score-CAM, Wang et
al., CVPR-W 2020, arXiv 1910.01279); Grad-CAM is Selvaraju et al., arXiv 1610.02391.

The two scores and their conventions (upsampling, ties, empty masks) are
:func:`attnlab.metrics.pointing_game` and :func:`attnlab.metrics.energy_in_mask`; this module
produces the maps (:mod:`~attnlab.viz.gradcam`, :mod:`~attnlab.viz.maps`) and scores them.

Example:
    >>> import torch, attnlab
    >>> from attnlab.viz import localization_score
    >>> model = attnlab.create_model("resnet20", attn="cbam", num_classes=2)
    >>> masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    >>> masks[:, 8:24, 8:24] = True
    >>> score = localization_score(model, [(torch.rand(2, 3, 32, 32), masks)])
    >>> score["count"], 0.0 <= score["gradcam"]["pointing"] <= 1.0, score["attention"] is None
    (2, True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..metrics.localization import energy_in_mask, pointing_game
from .gradcam import grad_cam
from .maps import collect_attention, spatial_maps


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
