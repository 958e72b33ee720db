"""Overlays, galleries and channel-weight histograms, written as PNG files.

matplotlib is an optional extra (``pip install attnlab[viz]``), imported inside the functions
that draw; :func:`require_matplotlib` says which extra to install when it is missing. Figures
use matplotlib's object-oriented API (no pyplot), so no global backend is switched and nothing
opens a window.

Display conventions: each map is stretched to its own [min, max] before colouring (the printed
summaries of ``attnlab viz`` give the raw ranges), upsampled bilinearly to the image, and blended
over the de-normalised input with ``alpha``; channel weights are drawn as bars (one bar per
channel, on [0, 1]); channel-affinity matrices (DANet CAM) as C×C images.

Example:
    >>> import os, tempfile, torch
    >>> from PIL import Image
    >>> from attnlab.viz.plots import GalleryColumn, save_gallery
    >>> images, heat = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 4, 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "g.png")
    >>> _ = save_gallery(images, [GalleryColumn("heat", heat)], path, cell=1.0, dpi=50)
    >>> Image.open(path).size  # 2 columns (input, heat) × 2 rows of 1-inch cells at 50 dpi
    (100, 100)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

EXTRA_HINT = "pip install attnlab[viz]"
MODES = ("overlay", "bars", "matrix")


def require_matplotlib() -> Any:
    """The ``matplotlib`` module; ImportError naming the extra to install if it is missing."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"attnlab.viz plots need matplotlib, which is not installed: {EXTRA_HINT}"
        ) from err
    return matplotlib


def to_display(image: Tensor, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
    """A C×H×W image (normalised with ``mean``/``std`` if given) as H×W×3 floats in [0, 1]."""
    image = image.detach().float().cpu()
    if mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3].clamp(0, 1).permute(1, 2, 0).numpy()  # H×W×3


def _stretch(heat: Tensor) -> Tensor:
    low, high = heat.min(), heat.max()
    return (heat - low) / (high - low) if high > low else torch.zeros_like(heat)


def overlay(
    image: np.ndarray, heat: Tensor, *, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """``heat`` (h×w or 1×h×w) stretched, upsampled, coloured and blended over ``image``
    (H×W×3 in [0, 1]); returns H×W×3 in [0, 1]."""
    matplotlib = require_matplotlib()
    heat = heat.detach().float().cpu().reshape(1, 1, *heat.shape[-2:])
    heat = F.interpolate(heat, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    coloured = matplotlib.colormaps[cmap](_stretch(heat).numpy())[..., :3]  # H×W×3
    return (1 - alpha) * image + alpha * coloured


def save_overlay(image: np.ndarray, heat: Tensor, path: str, *, scale: int = 1,
                 alpha: float = 0.5) -> str:  # fmt: skip
    """Writes one overlay as a PNG of the image's size × ``scale`` (nearest-neighbour)."""
    from PIL import Image

    pixels = (overlay(image, heat, alpha=alpha) * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path)
    return path


@dataclass
class GalleryColumn:
    """One gallery column: a title and one item per image.

    Attributes:
        title: column heading.
        data: ``"overlay"``: B×1×h×w maps; ``"bars"``: B×C channel weights; ``"matrix"``:
            B×C×C matrices.
        mode: how cells are drawn (:data:`MODES`).
        labels: optional per-image caption under each cell (e.g. the explained class).
    """

    title: str
    data: Tensor
    mode: str = "overlay"
    labels: list[str] | None = field(default=None)


def save_gallery(
    images: Tensor,
    columns: Sequence[GalleryColumn],
    path: str,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    row_labels: Sequence[str] | None = None,
    cell: float = 1.6,
    dpi: int = 100,
) -> str:
    """Gallery PNG: one row per image, the input first, then one column per ``columns`` entry.

    Args:
        images: B×C×H×W, normalised with ``mean``/``std`` if given.
        columns: what to show next to each input.
        path: PNG file to write (folders are created).
        mean: normalisation mean, to show the input as it was.
        std: normalisation std.
        row_labels: a caption per row (e.g. the true class), shown left of the input.
        cell: cell side in inches; the PNG is (1 + len(columns))·cell·dpi × B·cell·dpi pixels.
        dpi: pixels per inch.

    Returns:
        ``path``.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    for column in columns:
        if column.mode not in MODES:
            raise ValueError(f"save_gallery: mode must be one of {MODES}, got {column.mode!r}")
        if len(column.data) != len(images):
            raise ValueError(f"save_gallery: column {column.title!r} has {len(column.data)} "
                             f"items for {len(images)} images")  # fmt: skip
    rows, cols = len(images), 1 + len(columns)
    fig = Figure(figsize=(cols * cell, rows * cell), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.35 / rows, wspace=0.08,
                        hspace=0.25)  # fmt: skip
    font = max(6.0, 4.5 * cell)
    for r in range(rows):
        shown = to_display(images[r], mean, std)
        axes[r, 0].imshow(shown, interpolation="nearest")
        if row_labels is not None:
            axes[r, 0].set_title(row_labels[r], fontsize=font, pad=2)
        for c, column in enumerate(columns, start=1):
            ax = axes[r, c]
            item = column.data[r].detach().float().cpu()
            if column.mode == "overlay":
                ax.imshow(overlay(shown, item), interpolation="bilinear")
            elif column.mode == "matrix":
                ax.imshow(item.numpy(), cmap="viridis", interpolation="nearest")
            else:
                ax.bar(np.arange(item.numel()), item.numpy(), width=1.0, color="#4c72b0")
                ax.set_ylim(0, 1)
                ax.set_xlim(-0.5, item.numel() - 0.5)
            if column.labels is not None:
                ax.set_xlabel(column.labels[r], fontsize=font, labelpad=1)
            if r == 0:
                ax.set_title(column.title, fontsize=font, pad=4 if row_labels is None else 12)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def save_channel_histograms(weights: dict[str, Tensor], path: str, *, bins: int = 40,
                            dpi: int = 100) -> str:  # fmt: skip
    """One histogram of channel weights per stage (``{stage: weights}``), side by side."""
    require_matplotlib()
    from matplotlib.figure import Figure

    if not weights:
        raise ValueError("save_channel_histograms: no channel weights to plot")
    fig = Figure(figsize=(3.2 * len(weights), 2.6), dpi=dpi)
    axes = fig.subplots(1, len(weights), squeeze=False)[0]
    for ax, (stage, values) in zip(axes, weights.items(), strict=True):
        values = values.detach().float().cpu().numpy()
        ax.hist(values, bins=bins, range=(0.0, 1.0), color="#4c72b0")
        ax.set_title(f"{stage}: mean {values.mean():.2f}, std {values.std():.2f}", fontsize=8)
        ax.set_xlabel("channel weight", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("count", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.85, wspace=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def model_columns(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str | nn.Module | None = None,
    method: str = "gradcam",
    target: Any = None,
    modules: str = "per-stage",
    class_names: Sequence[str] | None = None,
) -> tuple[list[GalleryColumn], dict[str, Any]]:
    """Gallery columns for a model: Grad-CAM, then each attention module's map.

    Spatial modules show their spatial map (:func:`attnlab.viz.maps.spatial_maps`),
    channel-only modules their channel weights as bars, DANet CAM its affinity matrix.

    Args:
        model: a classifier in eval mode.
        images: the batch, ready for the model.
        layer: Grad-CAM layer (default: the last stage).
        method: ``"gradcam"`` or ``"gradcam++"``.
        target: Grad-CAM classes (see :func:`attnlab.viz.gradcam.grad_cam`).
        modules: ``"per-stage"`` (the last module of each stage) or ``"all"``.
        class_names: names for the class captions.

    Returns:
        (columns, {"cam": the CAMResult, "entries": the recorded maps, "modules": shown}).
    """
    from .gradcam import grad_cam
    from .maps import (
        affinity_maps,
        channel_weights,
        collect_attention,
        last_per_stage,
        module_stages,
        spatial_maps,
    )

    if modules not in ("per-stage", "all"):
        raise ValueError(f"modules must be 'per-stage' or 'all', got {modules!r}")
    cam = grad_cam(model, images, layer=layer, target=target, method=method)
    probs = cam.logits.float().softmax(1)
    names = class_names or [str(i) for i in range(cam.logits.shape[1])]
    captions = [f"{names[c]} {probs[i, c]:.2f}" for i, c in enumerate(cam.classes.tolist())]
    title = f"{'Grad-CAM++' if method == 'gradcam++' else 'Grad-CAM'} {cam.layer}"
    columns = [GalleryColumn(title, cam.maps, "overlay", captions)]
    _, entries = collect_attention(model, images)
    spatial, channel = spatial_maps(entries), channel_weights(entries)
    affinity = affinity_maps(entries)
    stages = module_stages(entries)
    shown = list(stages) if modules == "all" else last_per_stage(list(stages), stages)
    for module in shown:
        label = module.removesuffix(".attn") or type(model).__name__
        if module in spatial:
            kind, maps = spatial[module]
            columns.append(GalleryColumn(f"{label}\n{kind}", maps, "overlay"))
        elif module in channel:
            columns.append(GalleryColumn(f"{label}\nchannel", channel[module][1], "bars"))
        elif module in affinity:
            columns.append(GalleryColumn(f"{label}\naffinity", affinity[module], "matrix"))
    return columns, {"cam": cam, "entries": entries, "modules": shown}
