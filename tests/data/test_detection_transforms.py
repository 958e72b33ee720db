"""Detection augmentations on the joint v2 stack: boxes follow flips, letterbox and
scale/translate exactly on hand-made cases, follow the pixels under random draws, degenerate
boxes are dropped with their labels, HSV jitter leaves boxes alone."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from attnlab.data.detection import SyntheticDetection, eval_transform, train_transform
from attnlab.data.detection_transforms import (
    DetectionTransform,
    HSVJitter,
    Letterbox,
    RandomScaleTranslate,
    hsv_to_rgb,
    rgb_to_hsv,
    sanitize_boxes,
)
from attnlab.data.joint import RandomHorizontalFlip


def rectangle_scene(height=48, width=64, box=(10, 8, 30, 40)):
    """A black image with a white filled rectangle and its target (class 1)."""
    image = torch.zeros(3, height, width)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    return image, torch.tensor([[1.0, x1, y1, x2, y2]])


def assert_box_covers_rectangle(image, targets):
    """Inside the box (1 px margin) the image is white; just outside it is not."""
    assert len(targets) == 1
    _, x1, y1, x2, y2 = targets[0].tolist()
    inner = image[0, int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
    assert inner.numel() > 0 and inner.min() > 0.9
    ring = image[0].clone()
    ring[max(int(y1) - 1, 0) : int(y2) + 2, max(int(x1) - 1, 0) : int(x2) + 2] = 0
    assert ring.max() < 0.6


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "steps",
    [
        [RandomHorizontalFlip(p=1.0)],
        [RandomScaleTranslate(scale=(0.6, 1.4), translate=0.1), sanitize_boxes(2.0)],
        [Letterbox(96)],
        [Letterbox((32, 96))],
    ],
    ids=["flip", "scale-translate", "letterbox", "letterbox-wide"],
)
def test_boxes_follow_pixels(steps, seed):
    torch.manual_seed(seed)
    out, targets = DetectionTransform(steps)(*rectangle_scene())
    assert_box_covers_rectangle(out, targets)


def test_flip_exact():
    image, targets = rectangle_scene()
    out, t = DetectionTransform([RandomHorizontalFlip(p=1.0)])(image, targets)
    assert t.tolist() == [[1.0, 34.0, 8.0, 54.0, 40.0]]  # x → 64 − x, edges swap
    assert torch.equal(out, image.flip(-1))
    out, t = DetectionTransform([RandomHorizontalFlip(p=0.0)])(image, targets)
    assert t.tolist() == targets.tolist() and torch.equal(out, image)


def test_letterbox_exact():
    # 48×64 → 96×96: scale min(96/48, 96/64) = 1.5, resized 72×96, 12 grey rows above.
    image, targets = rectangle_scene()
    out, t = DetectionTransform([Letterbox(96)])(image, targets)
    assert t.tolist() == [[1.0, 15.0, 12.0 + 12, 45.0, 60.0 + 12]]
    assert (out[:, :12] == 0.5).all() and (out[:, 84:] == 0.5).all()
    assert out[:, 12:84].max() == 1.0 and out[:, 12:84].min() == 0.0
    # 30×40 → 64×64: scale 1.6, resized 48×64, 8 rows above and below; the whole image.
    image, targets = rectangle_scene(30, 40, box=(0, 0, 40, 30))
    out, t = DetectionTransform([Letterbox(64, fill=0.25)])(image, targets)
    assert t.tolist() == [[1.0, 0.0, 8.0, 64.0, 56.0]]
    assert (out[:, :8] == 0.25).all() and (out[:, 56:] == 0.25).all()
    # 48×64 → 32×96: scale 2/3, resized 32×43 (round 42.67): boxes follow the pixels' own
    # factors, 43/64 across and 32/48 down, then the 26 columns of padding on the left.
    out, t = DetectionTransform([Letterbox((32, 96))])(*rectangle_scene())
    expected = [1.0, 26 + 10 * 43 / 64, 8 * 32 / 48, 26 + 30 * 43 / 64, 40 * 32 / 48]
    torch.testing.assert_close(t[0], torch.tensor(expected))
    assert out.shape == (3, 32, 96) and (out[:, :, :26] == 0.5).all()
    assert (out[:, :, 26 + 43 :] == 0.5).all()


def test_scale_translate_exact_and_clamped():
    # Scale 0.5, no shift: 48×64 → 24×32 centred at (16, 12); box halves, then shifts.
    image, targets = rectangle_scene()
    out, t = DetectionTransform([RandomScaleTranslate(scale=(0.5, 0.5), translate=0.0)])(
        image, targets
    )
    assert t.tolist() == [[1.0, 5.0 + 16, 4.0 + 12, 15.0 + 16, 20.0 + 12]]
    assert out.shape == image.shape and (out[:, :12] == 0.5).all() and (out[:, :, :16] == 0.5).all()
    # Scale 2, no shift: 96×128 placed at (−32, −24); the box (20..60, 16..80) moves to
    # (−12..28, −8..56) and is clamped to the 64×48 canvas.
    out, t = DetectionTransform([RandomScaleTranslate(scale=(2.0, 2.0), translate=0.0)])(
        image, targets
    )
    assert t.tolist() == [[1.0, 0.0, 0.0, 28.0, 48.0]]


def test_degenerate_boxes_dropped_with_their_labels():
    image = torch.zeros(3, 48, 64)
    targets = torch.tensor([[0.0, 0, 0, 4, 4], [1.0, 10, 10, 30, 30], [2.0, 50, 0, 64, 3]])
    # Scale 0.3: 4 px → 1.2 px (dropped); the 3 px-high box → 0.9 px (dropped).
    shrink = DetectionTransform(
        [RandomScaleTranslate(scale=(0.3, 0.3), translate=0.0), sanitize_boxes(2.0)]
    )
    _, t = shrink(image, targets)
    assert t[:, 0].tolist() == [1.0] and len(t) == 1
    identity = DetectionTransform(
        [RandomScaleTranslate(scale=(1.0, 1.0), translate=0.0), sanitize_boxes(2.0)]
    )
    assert identity(image, targets)[1].tolist() == targets.tolist()
    # Shifted by up to half the image: the corner box sometimes leaves the image.
    torch.manual_seed(0)
    away = DetectionTransform(
        [RandomScaleTranslate(scale=(1.0, 1.0), translate=0.5), sanitize_boxes(2.0)]
    )
    corner = torch.tensor([[3.0, 0, 0, 10, 10]])
    kept = [away(image, corner)[1] for _ in range(20)]
    assert {len(k) for k in kept} == {0, 1}
    assert all(k[0, 0] == 3.0 and (k[0, 1:] >= 0).all() for k in kept if len(k))


def test_hsv_jitter_keeps_boxes_and_round_trips():
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(image)), image, rtol=1e-5, atol=1e-5)
    targets = torch.tensor([[0.0, 1, 2, 3, 4]])
    out, t = DetectionTransform([HSVJitter()])(image, targets)
    assert t.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]] and out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, image)
    gray = torch.full((3, 4, 4), 0.5)  # no saturation: hue and saturation gains do nothing
    torch.testing.assert_close(DetectionTransform([HSVJitter(value=0.0)])(gray, t)[0], gray)
    # A pure value gain scales R, G and B alike (YOLO's V, not a per-channel brightness).
    colour = torch.tensor([0.2, 0.4, 0.1])[:, None, None].expand(3, 2, 2)
    out = HSVJitter(hue=0.0, saturation=0.0, value=0.5).transform(colour, {"gains": [0, 0, 1]})
    torch.testing.assert_close(out, colour * 1.5)


def test_letterbox_pads_masks_with_the_ignore_label():
    image, mask = torch.rand(3, 30, 40), torch.ones(30, 40, dtype=torch.long)
    out_image, out_mask = Letterbox(64)(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    assert (out_mask[:8] == 255).all() and (out_mask[8:56] == 1).all()
    boxes = tv_tensors.BoundingBoxes([[0, 0, 40, 30]], format="XYXY", canvas_size=(30, 40))
    assert Letterbox(64)(tv_tensors.Image(image), boxes)[1].canvas_size == (64, 64)


def test_pipelines_and_bad_input():
    torch.manual_seed(0)
    image, targets = rectangle_scene()
    out, t = train_transform(64)(image, targets)
    assert out.shape == (3, 64, 64) and t.shape[1] == 5 and len(t) <= 1
    out, t = eval_transform(96)(image, targets)
    assert t.tolist() == [[1.0, 15.0, 24.0, 45.0, 72.0]]
    data = SyntheticDetection(size=64, length=2, num_targets=2, transform=train_transform(64))
    image, targets = data[1]
    assert image.shape == (3, 64, 64) and targets.shape[1] == 5
    with pytest.raises(ValueError, match="DetectionTransform: expected .* N×5"):
        eval_transform(64)(image, targets[:, 1:])
    with pytest.raises(ValueError, match="Letterbox: size"):
        Letterbox(0)
    with pytest.raises(ValueError, match="RandomScaleTranslate: need 0 < low"):
        RandomScaleTranslate(scale=(1.5, 0.5))
    with pytest.raises(ValueError, match="sanitize_boxes: min_size"):
        sanitize_boxes(0.5)
    with pytest.raises(TypeError, match="Letterbox: expected a float tensor"):
        Letterbox(8)(torch.zeros(3, 4, 4, dtype=torch.uint8))
