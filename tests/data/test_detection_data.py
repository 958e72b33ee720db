"""Detection data: synthetic wrapper, VOC/YOLO loaders on written files (malformed → error
naming the file). The augmentations: tests/data/test_detection_transforms.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data.detection import (
    SyntheticDetection,
    VOCDetection,
    YOLODetection,
    collate_detection,
)

CLASSES = ["cat", "dog"]


def write_image(path, width, height):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 100, np.uint8)).save(path)


def voc_xml(objects, width=40, height=30):
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]  # fmt: skip
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def make_voc(root, annotations, missing_image=None):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        if image_id != missing_image:
            write_image(str(root / "JPEGImages" / f"{image_id}.jpg"), 40, 30)
    (root / "ImageSets/Main/train.txt").write_text("\n".join(annotations) + "\n")


def test_synthetic_detection_boxes_and_collate():
    ds = SyntheticDetection(size=64, length=3, num_targets=2, num_classes=3)
    image, targets = ds[0]
    assert image.shape == (3, 64, 64) and targets.shape == (2, 5)
    assert targets[:, 0].max() < 3 and (targets[:, 3] > targets[:, 1]).all()
    scene = ds.scenes.scene(0)
    torch.testing.assert_close(targets[:, 1:], scene.boxes)
    images, batch_targets = collate_detection([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and len(batch_targets) == 2


def test_voc_loader(tmp_path):
    make_voc(
        tmp_path,
        {
            "a": voc_xml([("cat", (1, 1, 10, 20), False), ("dog", (5, 6, 40, 30), True)]),
            "b": voc_xml([]),
        },
    )
    ds = VOCDetection(str(tmp_path), "train", classes=CLASSES)
    assert len(ds) == 2
    image, targets = ds[0]
    assert image.shape == (3, 30, 40)
    assert targets.tolist() == [[0.0, 0.0, 0.0, 10.0, 20.0]]  # difficult dropped for training
    ann = ds.annotation(0)
    assert ann["difficult"].tolist() == [False, True] and ann["labels"].tolist() == [0, 1]
    assert ann["boxes"][1].tolist() == [4.0, 5.0, 40.0, 30.0]
    keep = VOCDetection(str(tmp_path), "train", classes=CLASSES, keep_difficult=True)
    assert len(keep[0][1]) == 2 and keep[1][1].shape == (0, 5)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><size>", "not a readable VOC XML"),
        (voc_xml([("bird", (1, 1, 5, 5), False)]), "unknown class 'bird'"),
        (voc_xml([("cat", (1, 1, 50, 5), False)]), "outside the 40×30 image"),
        (voc_xml([("cat", (8, 1, 5, 5), False)]), "empty or outside"),
        ("<annotation><object><name>cat</name></object></annotation>", "missing <size>"),
    ],
)
def test_voc_malformed(tmp_path, xml, message):
    make_voc(tmp_path, {"bad": xml})
    with pytest.raises(ValueError, match=message) as err:
        VOCDetection(str(tmp_path), "train", classes=CLASSES)
    assert "bad.xml" in str(err.value)


def test_voc_missing_image_and_split(tmp_path):
    make_voc(tmp_path, {"x": voc_xml([])}, missing_image="x")
    with pytest.raises(ValueError, match=r"x\.jpg"):
        VOCDetection(str(tmp_path), "train", classes=CLASSES)
    with pytest.raises(ValueError, match="val.txt"):
        VOCDetection(str(tmp_path), "val", classes=CLASSES)


def make_yolo(root, labels, images=None):
    for stem in images if images is not None else labels:
        write_image(str(root / "images" / f"{stem}.png"), 40, 20)
    os.makedirs(root / "labels", exist_ok=True)
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_text(text)


def test_yolo_loader(tmp_path):
    make_yolo(tmp_path, {"a": "1 0.5 0.5 0.5 0.5\n0 0.25 0.25 0.5 0.5\n"}, images=["a", "b"])
    ds = YOLODetection(str(tmp_path), CLASSES)
    assert len(ds) == 2
    image, targets = ds[0]
    assert image.shape == (3, 20, 40)
    assert targets.tolist() == [[1.0, 10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 0.0, 20.0, 10.0]]
    assert ds[1][1].shape == (0, 5)  # no label file: no objects


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2\n", "expected 5 fields"),
        ("2 0.5 0.5 0.2 0.2\n", "class 2 outside"),
        ("0 0.95 0.5 0.2 0.2\n", "outside the image"),
        ("0 a 0.5 0.2 0.2\n", "not numbers"),
    ],
)
def test_yolo_malformed(tmp_path, text, message):
    make_yolo(tmp_path, {"bad": text})
    with pytest.raises(ValueError, match=message) as err:
        YOLODetection(str(tmp_path), CLASSES)
    assert "bad.txt" in str(err.value)


def test_yolo_label_without_image(tmp_path):
    make_yolo(tmp_path, {"orphan": "0 0.5 0.5 0.2 0.2\n"}, images=["other"])
    with pytest.raises(ValueError, match=r"orphan\.txt: no matching image"):
        YOLODetection(str(tmp_path), CLASSES)


def test_voc_size_must_match_the_image(tmp_path):
    make_voc(tmp_path, {"a": voc_xml([("cat", (1, 1, 10, 20), False)], width=50, height=30)})
    ds = VOCDetection(str(tmp_path), "train", classes=CLASSES)
    with pytest.raises(ValueError, match=r"a\.jpg: the image is 40×30 but its annotation .*a\.xml"):
        ds[0]


def test_decompression_bombs_are_data_errors_naming_the_file(tmp_path, monkeypatch):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n"})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40×20 = 800 > 2 × 100: a "bomb"
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        YOLODetection(str(tmp_path), CLASSES)
