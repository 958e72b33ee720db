"""Tensor transforms: shapes, values, determinism under torch.manual_seed, bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from attnlab.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    pil_to_tensor,
)


def _augment() -> Compose:
    return Compose(
        [RandomCrop(16, padding=2), RandomHorizontalFlip(), Normalize([0.5] * 3, [0.2] * 3)]
    )


def test_shapes():
    image = torch.rand(3, 20, 30)
    assert RandomCrop(16, padding=2)(image).shape == (3, 16, 16)
    assert RandomCrop((10, 25))(image).shape == (3, 10, 25)
    assert RandomHorizontalFlip()(image).shape == image.shape
    assert Resize(10)(image).shape == (3, 10, 15)  # shorter side, aspect kept
    assert Resize((7, 9))(image).shape == (3, 7, 9)
    assert CenterCrop(12)(image).shape == (3, 12, 12)
    assert CenterCrop(24)(image).shape == (3, 24, 24)  # padded where smaller
    assert Normalize([0.0] * 3, [1.0] * 3)(image).shape == image.shape


def test_deterministic_under_manual_seed():
    image = torch.rand(3, 16, 16)
    torch.manual_seed(3)
    first = [_augment()(image) for _ in range(8)]
    torch.manual_seed(3)
    second = [_augment()(image) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(first[0], x) for x in first[1:])  # it does vary


def test_values():
    image = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(image), image.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(image), image)
    assert torch.equal(CenterCrop((1, 2))(image), image[:, 1:2, 1:3])
    assert torch.equal(RandomCrop((3, 4))(image), image)  # the only window
    normalized = Normalize([1.0, 2.0], [2.0, 4.0])(torch.ones(2, 2, 2))
    assert torch.allclose(normalized[0], torch.zeros(2, 2)) and torch.allclose(
        normalized[1], torch.full((2, 2), -0.25)
    )
    constant = torch.full((3, 9, 9), 0.25)
    assert torch.allclose(Resize(4)(constant), torch.full((3, 4, 4), 0.25))
    padded = RandomCrop(4, padding=2)(torch.ones(1, 4, 4))
    assert padded.min() >= 0 and padded.max() == 1


def test_pil_to_tensor():
    rgb = Image.new("RGB", (3, 2), (255, 128, 0))
    tensor = pil_to_tensor(rgb)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))
    assert pil_to_tensor(Image.new("L", (3, 2), 255)).shape == (1, 2, 3)
    assert pil_to_tensor(Image.new("RGBA", (3, 2))).shape == (3, 2, 3)


def test_bad_input():
    with pytest.raises(TypeError, match="RandomCrop"):
        RandomCrop(4)(torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(8)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="channel"):
        Normalize([0.5] * 3, [0.2] * 3)(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="Resize"):
        Resize(0)
    with pytest.raises(TypeError, match="PIL"):
        pil_to_tensor(torch.zeros(3, 2, 2))
