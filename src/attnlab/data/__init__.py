"""Datasets: built-in synthetic scenes, CIFAR-10/100, image folders, tensor transforms.

:func:`build_datasets` is what the engine and the CLI call: one name, a folder, and it returns
train and validation datasets with augmentation and normalisation already applied.

Example:
    >>> from attnlab.data import build_datasets
    >>> train, val, info = build_datasets("synthetic", train_size=64, val_size=32)
    >>> image, label = train[0]
    >>> tuple(image.shape), info["num_classes"]
    ((3, 32, 32), 6)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from .cifar import CIFAR
from .folder import ImageFolder
from .synthetic import SyntheticScenes
from .transforms import CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, Resize

# Materialised synthetic splits, shared by every run in a process (``attnlab compare`` trains
# a dozen models on the same scenes): generating 4000 scenes costs ~2-3 s per epoch otherwise.
_SCENE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_SCENE_CACHE_LIMIT = 4


class CachedScenes(Dataset):
    """Classification view of a ``SyntheticScenes`` split with its images generated once.

    Same items as the generator (image, label) with ``transform`` applied per item, so random
    augmentation still differs every epoch.
    """

    def __init__(self, scenes: Dataset) -> None:
        # repr: split, length, size, classes, difficulty, seed, task; plus the object counts.
        key = (repr(scenes), scenes.num_targets, scenes.num_distractors)
        if key not in _SCENE_CACHE:
            if len(_SCENE_CACHE) >= _SCENE_CACHE_LIMIT:
                _SCENE_CACHE.pop(next(iter(_SCENE_CACHE)))
            items = [scenes.scene(i) for i in range(len(scenes))]
            _SCENE_CACHE[key] = (
                torch.stack([s.image for s in items]),  # n×3×S×S
                torch.tensor([s.label for s in items]),
            )
        self.images, self.labels = _SCENE_CACHE[key]
        self.classes, self.num_classes = scenes.classes, scenes.num_classes
        self.transform = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.labels[index])


DATASETS = ("synthetic", "cifar10", "cifar100", "folder")

# Channel statistics of the training sets (CIFAR: the usual published values; folders: ImageNet).
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _synthetic_stats(dataset: Dataset, count: int = 256) -> tuple[tuple, tuple]:
    """Per-channel mean and std over the first ``count`` scenes (deterministic)."""
    images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])  # n×3×H×W
    return tuple(images.mean((0, 2, 3)).tolist()), tuple(images.std((0, 2, 3)).tolist())


def build_datasets(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    difficulty: str = "default",
    seed: int = 0,
    download: bool = False,
    augment: bool = True,
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Train and validation datasets for ``name``, transforms included.

    Args:
        name: ``"synthetic"`` (built in, no files), ``"cifar10"``, ``"cifar100"`` or
            ``"folder"`` (``data_dir/train/<class>/*.png|jpg`` and ``data_dir/val/<class>/…``).
        data_dir: folder of the real data (CIFAR: the folder holding ``cifar-10-batches-py/``
            or that folder itself).
        image_size: synthetic scene size (default 32) or the size folders are resized to
            (default 224); CIFAR images are 32×32.
        train_size: synthetic training scenes (default: the generator's).
        val_size: synthetic validation scenes (default: the generator's).
        difficulty: synthetic difficulty.
        seed: synthetic generator seed (the scenes, not the training run).
        download: fetch CIFAR into ``data_dir`` if absent (checksum verified).
        augment: random crops (and flips, for real images) on the training set.

    Returns:
        (train, val, info) with info = {"num_classes", "in_chans", "image_size", "classes",
        "mean", "std", "name"}.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name != "synthetic" and not data_dir:
        raise ValueError(f"dataset {name!r} needs a data directory (--data-dir)")
    if name != "synthetic" and not download and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory not found: {data_dir}")

    if name == "synthetic":
        size = image_size or 32
        common = dict(size=size, difficulty=difficulty, seed=seed)
        train = CachedScenes(SyntheticScenes(split="train", length=train_size, **common))
        val = CachedScenes(SyntheticScenes(split="val", length=val_size, **common))
        mean, std = _synthetic_stats(train)
        train_aug = [RandomCrop(size, padding=size // 16)] if augment else []
        train.transform = Compose([*train_aug, Normalize(mean, std)])
        val.transform = Normalize(mean, std)
        classes = train.classes
    elif name in ("cifar10", "cifar100"):
        mean, std = _STATS[name]
        num_classes = 10 if name == "cifar10" else 100
        size = 32
        train_aug = [RandomCrop(32, padding=4), RandomHorizontalFlip()] if augment else []
        train = CIFAR(
            data_dir,
            train=True,
            num_classes=num_classes,
            download=download,
            transform=Compose([*train_aug, Normalize(mean, std)]),
        )
        val = CIFAR(data_dir, train=False, num_classes=num_classes, transform=Normalize(mean, std))
        classes = train.classes
    else:
        mean, std = _STATS["folder"]
        size = image_size or 224
        splits = {s: os.path.join(data_dir, s) for s in ("train", "val")}
        for split, path in splits.items():
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"image folder layout expects {path} (data_dir/{split}/<class>/<images>)"
                )
        train_aug = [RandomCrop(size, padding=size // 8), RandomHorizontalFlip()] if augment else []
        train = ImageFolder(
            splits["train"],
            transform=Compose(
                [Resize(size), CenterCrop(size), *train_aug, Normalize(mean, std)]
            ),  # fmt: skip
        )
        val = ImageFolder(
            splits["val"], transform=Compose([Resize(size), CenterCrop(size), Normalize(mean, std)])
        )
        if val.classes != train.classes:
            raise ValueError(
                f"image folder: val classes {val.classes} differ from train classes "
                f"{train.classes} in {data_dir}"
            )
        classes = train.classes
    info = {
        "name": name,
        "num_classes": len(classes),
        "in_chans": 3,
        "image_size": size,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
    }
    return train, val, info
