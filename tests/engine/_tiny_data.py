"""Tiny in-memory datasets for the engine tests (imported by them; not a test file)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from attnlab.data.transforms import RandomCrop, RandomHorizontalFlip


class AugmentedTensors(Dataset):
    """Random tensors with a random crop and flip (exercises the RNG state on resume)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.crop, self.flip = RandomCrop(images.shape[-1], padding=2), RandomHorizontalFlip()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.flip(self.crop(self.images[i])), self.labels[i]


def make_data(n: int = 32, size: int = 16, classes: int = 4, augment: bool = False, seed: int = 0):
    """(train, val, info) of random images whose label is encoded in their mean brightness."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = (
        torch.rand(n, 3, size, size, generator=generator) * 0.5 + labels[:, None, None, None] * 0.1
    )
    train = AugmentedTensors(images, labels) if augment else TensorDataset(images, labels)
    val = TensorDataset(images[: n // 2], labels[: n // 2])
    info = {
        "num_classes": classes,
        "in_chans": 3,
        "image_size": size,
        "classes": [f"c{i}" for i in range(classes)],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    return train, val, info
