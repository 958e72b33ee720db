"""Segmentation data: synthetic scenes, the VOC-layout loader and joint transforms."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data.segmentation import (
    JointCompose,
    Normalize,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    VOCSegmentation,
    synthetic_segmentation,
    train_transform,
)


def _write_item(root, image_id, size=(20, 16), mask=None, mask_size=None, mode="P"):
    width, height = size
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClass"), exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
    mw, mh = mask_size or size
    if mask is None:
        mask = np.zeros((mh, mw), dtype=np.uint8)
        mask[2:6, 3:9] = 1
        mask[0, :] = 255
    if mode == "P":
        png = Image.new("P", (mw, mh))
        png.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
        png.frombytes(mask.tobytes())  # palette indices are the class ids
    else:
        png = Image.fromarray(mask).convert(mode)
    png.save(os.path.join(root, "SegmentationClass", f"{image_id}.png"))
    return mask


def _write_split(root, ids, split="train"):
    os.makedirs(os.path.join(root, "ImageSets", "Segmentation"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")


def test_voc_loader_reads_index_pngs(tmp_path):
    root = str(tmp_path)
    mask = _write_item(root, "2007_000001")
    _write_item(root, "2007_000002", size=(12, 10))
    _write_split(root, ["2007_000001", "2007_000002"])
    _write_split(root, ["2007_000002"], "val")
    with Image.open(os.path.join(root, "SegmentationClass", "2007_000001.png")) as png:
        assert png.mode == "P"
    data = VOCSegmentation(root, "train", verify=True)
    assert len(data) == 2 and data.num_classes == 21 and data.classes[15] == "person"
    image, labels = data[0]
    assert image.shape == (3, 16, 20) and image.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(mask).long())
    assert set(labels.unique().tolist()) == {0, 1, 255}
    assert len(VOCSegmentation(root, "val")) == 1
    data.transform = lambda img, m: (img[:, :4], m[:4])
    assert data[1][0].shape == (3, 4, 12) and data[1][1].shape == (4, 12)


def test_voc_loader_accepts_grey_masks(tmp_path):
    root = str(tmp_path)
    mask = _write_item(root, "a", mode="L")
    _write_split(root, ["a"])
    assert torch.equal(VOCSegmentation(root)[0][1], torch.from_numpy(mask).long())


def test_missing_image_or_mask_names_the_file(tmp_path):
    root = str(tmp_path)
    _write_item(root, "a")
    _write_split(root, ["a", "b"])
    with pytest.raises(ValueError, match=r"missing image .*JPEGImages.b\.jpg"):
        VOCSegmentation(root)
    _write_item(root, "b")
    os.remove(os.path.join(root, "SegmentationClass", "b.png"))
    with pytest.raises(ValueError, match=r"missing mask .*SegmentationClass.b\.png"):
        VOCSegmentation(root)
    with pytest.raises(ValueError, match="split list not found"):
        VOCSegmentation(root, "test")


def test_size_mismatch_names_the_file(tmp_path):
    root = str(tmp_path)
    _write_item(root, "a")
    _write_item(root, "odd", size=(20, 16), mask_size=(20, 15))
    _write_split(root, ["a", "odd"])
    data = VOCSegmentation(root)
    data[0]
    with pytest.raises(ValueError, match=r"odd\.png is 20×15 but image .*odd\.jpg is 20×16"):
        data[1]
    with pytest.raises(ValueError, match=r"odd\.png"):
        VOCSegmentation(root, verify=True)


def test_label_outside_classes_names_the_file(tmp_path):
    root = str(tmp_path)
    bad = np.zeros((16, 20), dtype=np.uint8)
    bad[3, 3] = 21
    bad[4, 4] = 255  # ignore is allowed
    _write_item(root, "bad", mask=bad)
    _write_split(root, ["bad"])
    with pytest.raises(ValueError, match=r"bad\.png has label 21 outside 0..20"):
        VOCSegmentation(root)[0]
    assert VOCSegmentation(root, num_classes=22)[0][1][3, 3] == 21


def test_colour_mask_is_refused(tmp_path):
    root = str(tmp_path)
    _write_item(root, "rgb", mode="RGB")
    _write_split(root, ["rgb"])
    with pytest.raises(ValueError, match=r"rgb\.png has mode 'RGB'"):
        VOCSegmentation(root)[0]


def _rectangle_scene():
    image = torch.zeros(3, 48, 64)
    mask = torch.zeros(48, 64, dtype=torch.long)
    image[:, 10:30, 12:41] = 1.0  # off-centre, so flips show
    mask[10:30, 12:41] = 1
    return image, mask


def test_geometric_transforms_keep_mask_aligned():
    transform = JointCompose([RandomScale((0.5, 2.0)), RandomCrop(40), RandomHorizontalFlip()])
    for seed in range(30):
        torch.manual_seed(seed)
        image, mask = transform(*_rectangle_scene())
        assert image.shape == (3, 40, 40) and mask.shape == (40, 40) and mask.dtype == torch.long
        valid, grey = mask != 255, image[0]
        # The mask takes the nearest source pixel, the image interpolates the 2×2 around it
        # with weight ≥ ½ per axis on that nearest pixel: inside the rectangle a pixel keeps at
        # least ½·½ of its value, outside at most ½; the rectangle's interior is labelled 1.
        assert (grey[valid & (mask == 1)] >= 0.25 - 1e-6).all()
        assert (grey[valid & (mask == 0)] <= 0.5 + 1e-6).all()
        assert (mask[grey == 1.0] == 1).all() and (mask == 1).any()
        assert torch.equal(image[0], image[2])


def test_flip_moves_image_and_mask_together():
    image, mask = RandomHorizontalFlip(p=1.0)(*_rectangle_scene())
    assert mask[10:30, 23:52].all() and not mask[:, :23].any() and not mask[:, 52:].any()
    assert torch.equal(image[0] == 1, mask == 1)
    assert RandomHorizontalFlip(p=0.0)(*_rectangle_scene())[1][10:30, 12:41].all()


def test_crop_pads_image_with_fill_and_mask_with_ignore():
    torch.manual_seed(0)
    image, mask = RandomScale((0.5, 0.5))(*_rectangle_scene())
    assert image.shape == (3, 24, 32) and mask[5:15, 6:20].eq(1).all()
    image, mask = RandomCrop(40, fill=(0.25, 0.5, 0.75))(image, mask)
    assert image.shape == (3, 40, 40)
    assert (mask[24:] == 255).all() and (mask[:, 32:] == 255).all()
    assert (mask[:24, :32] != 255).all()
    assert torch.equal(image[:, 24:, 0], torch.tensor([0.25, 0.5, 0.75])[:, None].expand(3, 16))
    big_image, big_mask = RandomCrop((8, 12))(*_rectangle_scene())
    assert big_image.shape == (3, 8, 12) and (big_mask != 255).all()


def test_photometric_jitter_and_normalise_touch_the_image_only():
    torch.manual_seed(0)
    image, mask = torch.rand(3, 16, 16), torch.randint(0, 3, (16, 16))
    jittered, same = PhotometricJitter(0.4, 0.4, 0.4)(image, mask)
    assert same is mask and not torch.equal(jittered, image)
    assert jittered.min() >= 0 and jittered.max() <= 1
    identity, _ = PhotometricJitter(0.0, 0.0, 0.0)(image, mask)
    torch.testing.assert_close(identity, image)
    normalised, same = Normalize((0.5, 0.5, 0.5), (0.5, 0.25, 1.0))(image, mask)
    assert same is mask
    torch.testing.assert_close(normalised[1], (image[1] - 0.5) / 0.25)


def test_synthetic_default_and_train_transform():
    data = synthetic_segmentation(split="val", length=3, size=32, num_classes=4, num_targets=2)
    assert data.num_classes == 5 and data.classes[0] == "background" and len(data) == 3
    image, mask = data[0]
    assert image.shape == (3, 32, 32) and mask.dtype == torch.int64
    assert mask.min() >= 0 and mask.max() < 5 and (mask > 0).any()
    torch.manual_seed(0)
    data.transform = train_transform(24)
    image, mask = data[1]
    assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
    labels = set(mask.unique().tolist())
    assert labels <= set(range(5)) | {255}
