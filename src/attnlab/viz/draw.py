"""Drawing on images: detected boxes and segmentation masks, by torchvision's utilities.

The results of the detection (YOLOv4, arXiv 2004.10934) and segmentation (DANet, arXiv
1809.02983) commands are drawn with :func:`torchvision.utils.draw_bounding_boxes` and
:func:`torchvision.utils.draw_segmentation_masks` on uint8 3×H×W tensors; one colour per class
from :data:`PALETTE` (cycled).

Example:
    >>> import torch
    >>> from attnlab.viz.draw import draw_boxes, overlay_labels
    >>> image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    >>> out = draw_boxes(image, torch.tensor([[5.0, 5, 30, 20]]), torch.tensor([1]),
    ...                  torch.tensor([0.9]), ["cat", "dog"])
    >>> out.shape, out.dtype, tuple(out[:, 5, 15].tolist())  # the top edge in class 1's colour
    (torch.Size([3, 40, 60]), torch.uint8, (60, 180, 75))
    >>> labels = torch.zeros(40, 60, dtype=torch.long)
    >>> labels[:10] = 2
    >>> tuple(overlay_labels(image, labels, alpha=1.0)[:, 0, 0].tolist())
    (255, 225, 25)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

Colour = tuple[int, int, int]

# Distinct colours for class indices (cycled): the first ten of Sasha Trubetskoy's list.
PALETTE: tuple[Colour, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def _check_image(image: Tensor, where: str) -> None:
    if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, Tensor) else type(image)
        raise TypeError(f"{where}: image must be a uint8 3×H×W tensor, got {got}")


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    *,
    palette: Sequence[Colour] = PALETTE,
    width: int | None = None,
) -> Tensor:
    """A copy of ``image`` with each xyxy box outlined and labelled ``class score``.

    Args:
        image: uint8 3×H×W.
        boxes: D×4 xyxy in the image's pixels.
        labels: D class indices.
        scores: D scores.
        class_names: the name of each class index.
        palette: colours by class index (cycled).
        width: line width (default: the longer side / 200, at least 1).
    """
    _check_image(image, "draw_boxes")
    if width is None:
        width = max(1, round(max(image.shape[-2:]) / 200))
    labels = [int(c) for c in labels]
    colours = [tuple(palette[c % len(palette)]) for c in labels]
    texts = [f"{class_names[c]} {float(s):.2f}" for c, s in zip(labels, scores, strict=True)]
    if not labels:
        return image.clone()
    return draw_bounding_boxes(
        image,
        boxes.detach().float().cpu().reshape(-1, 4),
        labels=texts,
        colors=colours,
        width=width,
        label_colors=(0, 0, 0),
        label_background_colors=colours,
        fill_labels=True,
    )


def overlay_labels(
    image: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    palette: Sequence[Colour] = PALETTE,
    background: int | None = 0,
) -> Tensor:
    """``image`` with each class's pixels blended with its colour (``alpha``: the colour's
    share); pixels of class ``background`` (None: none) are left as they are."""
    _check_image(image, "overlay_labels")
    if labels.shape != image.shape[-2:]:
        raise ValueError(
            f"overlay_labels: labels must be H×W = {tuple(image.shape[-2:])}, "
            f"got {tuple(labels.shape)}"
        )
    present = [int(c) for c in labels.unique() if int(c) != background]
    if not present:
        return image.clone()
    masks = torch.stack([labels == c for c in present])  # K×H×W, one mask per class present
    colours = [tuple(palette[c % len(palette)]) for c in present]
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colours)
