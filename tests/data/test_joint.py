"""The joint transform stack (torchvision.transforms.v2): one draw moves image, mask and boxes
together; plain (image, mask) pairs come back as plain tensors."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from attnlab.data.joint import (
    CenterCrop,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
)


def _sample():
    """A 3×20×30 image with a bright box at x 5..15, y 4..12, its mask and its box."""
    image = torch.zeros(3, 20, 30)
    image[:, 4:12, 5:15] = 1.0
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[4:12, 5:15] = 1
    boxes = tv_tensors.BoundingBoxes([[5, 4, 15, 12]], format="XYXY", canvas_size=(20, 30))
    return tv_tensors.Image(image), tv_tensors.Mask(mask), boxes


def _box_of(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask == 1, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_one_draw_moves_image_mask_and_boxes_together():
    augment = Compose([RandomScale((0.5, 1.5)), RandomCrop(16, pad_if_needed=True),
                       RandomHorizontalFlip()])  # fmt: skip
    for seed in range(20):
        torch.manual_seed(seed)
        image, mask, boxes = augment(*_sample())
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.canvas_size == (16, 16)
        if (mask == 1).any():
            # The box follows the mask up to one pixel of nearest-pixel resampling.
            box = torch.tensor(_box_of(mask), dtype=torch.float32)
            torch.testing.assert_close(boxes[0].float(), box, atol=1.5, rtol=0)
            assert (image[0][mask == 1] > 0.2).all() and (image[0][mask == 0] < 0.8).all()


def test_flip_and_crop_values():
    image, mask, boxes = _sample()
    flipped = RandomHorizontalFlip(p=1.0)(image, mask, boxes)
    assert flipped[2].tolist() == [[15, 4, 25, 12]] and _box_of(flipped[1]) == [15, 4, 25, 12]
    crop = CenterCrop((10, 10))(image, mask, boxes)
    assert crop[0].shape == (3, 10, 10) and crop[2].tolist() == [[0, 0, 5, 7]]
    assert _box_of(crop[1]) == [0, 0, 5, 7]
    resized = Resize((40, 60))(image, mask, boxes)
    assert resized[1].shape == (40, 60) and resized[2].tolist() == [[10, 8, 30, 24]]


def test_plain_pairs_stay_plain_and_untouched_masks_are_returned_as_given():
    image, mask = torch.rand(3, 8, 8), torch.randint(0, 3, (8, 8))
    out_image, out_mask = RandomHorizontalFlip(p=1.0)(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert torch.equal(out_mask, mask.flip(-1))
    assert RandomHorizontalFlip(p=0.0)(image, mask)[1] is mask
    padded = RandomCrop(10, pad_if_needed=True, ignore_index=7)(image, mask)[1]
    assert padded.shape == (10, 10) and (padded[8:] == 7).all() and (padded[:, 8:] == 7).all()
