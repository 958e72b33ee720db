"""ImageFolder: class order, sizes, corrupt files raise by default or are skipped with a warning."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from PIL import Image

from attnlab.data.folder import ImageFolder


def _write_folder(root, corrupt: bool = False) -> None:
    colours = {"b_red": (255, 0, 0), "a_green": (0, 255, 0)}
    for name, colour in colours.items():
        os.makedirs(root / name / "nested")
        Image.new("RGB", (20, 10), colour).save(root / name / "1.png")
        Image.new("RGB", (8, 8), colour).save(root / name / "nested" / "2.JPG", quality=95)
        (root / name / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "a_green" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")


def test_classes_labels_and_sizes(tmp_path):
    _write_folder(tmp_path)
    data = ImageFolder(tmp_path, image_size=12)
    assert data.classes == ["a_green", "b_red"] and data.num_classes == 2
    assert len(data) == 4 and [label for _, label in data.samples] == [0, 0, 1, 1]
    image, label = data[0]
    assert image.shape == (3, 12, 12) and label == 0
    assert torch.allclose(image[:, 6, 6], torch.tensor([0.0, 1.0, 0.0]), atol=0.02)
    native = ImageFolder(tmp_path, transform=lambda x: x * 2)
    assert native[3][0].shape == (3, 8, 8) and native[3][0].max() > 1.9  # jpeg red ≈ 1 × 2


def test_corrupt_file_raises_naming_it(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match="broken.jpg"):
        ImageFolder(tmp_path)


def test_corrupt_file_skipped_with_warning(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=True)
    with caplog.at_level(logging.WARNING, logger="attnlab.data.folder"):
        data = ImageFolder(tmp_path, on_error="skip")
    assert len(data) == 4 and data.skipped == [str(tmp_path / "a_green" / "broken.jpg")]
    assert "broken.jpg" in caplog.text


def test_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class"):
        ImageFolder(tmp_path)
    os.makedirs(tmp_path / "empty_class")
    with pytest.raises(ValueError, match="no readable"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolder(tmp_path, on_error="ignore")


def test_an_empty_class_folder_is_refused(tmp_path):
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / name)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
    os.makedirs(tmp_path / "zebra")  # no images: not a class the model could learn
    with pytest.raises(ValueError, match=r"without readable images: .*zebra"):
        ImageFolder(str(tmp_path))
