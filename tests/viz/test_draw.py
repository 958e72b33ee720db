"""Box and mask drawing (torchvision's utilities): colours by class, labels, blending, errors."""

from __future__ import annotations

import pytest
import torch

from attnlab.viz.draw import PALETTE, draw_boxes, overlay_labels


def test_boxes_outlined_in_class_colours_and_input_untouched():
    image = torch.full((3, 64, 80), 200, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 30, 40, 60], [50, 35, 75, 55]])
    out = draw_boxes(image, boxes, torch.tensor([0, 13]), torch.tensor([0.9, 0.5]), ["a"] * 14)
    assert image.eq(200).all()  # a copy
    assert tuple(out[:, 60, 25].tolist()) == PALETTE[0]  # bottom edge of box 0
    assert tuple(out[:, 45, 75].tolist()) == PALETTE[13 % len(PALETTE)]  # right edge of box 1
    assert out[:, 45, 25].eq(200).all()  # inside, below the label: not filled
    assert out[:, 5, 5].eq(200).all()  # outside every box
    empty = draw_boxes(image, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), [])
    assert torch.equal(empty, image)


def test_label_text_is_drawn():
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    box = torch.tensor([[4.0, 4, 90, 60]])
    labelled = draw_boxes(image, box, torch.tensor([2]), torch.tensor([0.75]), ["a", "b", "cat"])
    # The label's background (class colour) and its black text sit in the box's top-left.
    corner = labelled[:, 6:16, 6:40]
    colour = torch.tensor(PALETTE[2], dtype=torch.uint8)[:, None, None]
    assert corner.eq(colour).all(0).any() and corner.eq(0).all(0).any()


def test_overlay_blends_classes_and_leaves_background():
    image = torch.full((3, 4, 6), 100, dtype=torch.uint8)
    labels = torch.zeros(4, 6, dtype=torch.long)
    labels[0, :3] = 1
    labels[3, 5] = 12
    out = overlay_labels(image, labels, alpha=0.5)
    assert out[:, 1:3].eq(100).all()  # background untouched
    expected = (torch.tensor(PALETTE[1]) * 0.5 + 100 * 0.5).to(torch.uint8)
    assert (out[:, 0, 0].int() - expected.int()).abs().max() <= 1  # rounding to uint8
    assert tuple(overlay_labels(image, labels, alpha=1.0)[:, 3, 5].tolist()) == PALETTE[2]
    whole = overlay_labels(image, labels, alpha=1.0, background=None)
    assert tuple(whole[:, 1, 1].tolist()) == PALETTE[0]


def test_errors():
    with pytest.raises(TypeError, match="draw_boxes: image must be a uint8 3×H×W"):
        draw_boxes(torch.zeros(3, 4, 4), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), [])
    with pytest.raises(ValueError, match="overlay_labels: labels must be H×W"):
        overlay_labels(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 5))
