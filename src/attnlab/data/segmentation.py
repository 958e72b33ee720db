"""Segmentation data for DANet (Fu et al., CVPR 2019, arXiv 1809.02983): synthetic scenes
(the default), a VOC-layout folder loader, and joint image+mask transforms on tensors.

- :func:`synthetic_segmentation`: ``SyntheticScenes(task="segmentation")`` masks, 0 =
  background and k + 1 = class glyph k, so ``num_classes`` = K + 1.
- :class:`VOCSegmentation`: ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png``
  (index PNGs, palette mode "P" or grey "L": pixel values are class ids, 255 = ignore) and
  ``root/ImageSets/Segmentation/<split>.txt``. A missing image or mask is an error when the
  dataset is built; a mask whose size differs from its image, a label outside the classes
  (other than 255) or a colour (RGB) mask is an error when the item is loaded (or at once with
  ``verify=True``). Every error is a ValueError naming the file.
- Transforms (the shared stack of ``joint.py``, on torchvision.transforms.v2) take and return
  ``(image, mask)``: image float 3×H×W, mask int64 H×W. Geometric ones move both (bilinear
  image, nearest mask); photometric ones and ``Normalize`` touch the image only. Random draws
  use torch's global generator.

Example:
    >>> import torch
    >>> from attnlab.data.segmentation import synthetic_segmentation, train_transform
    >>> data = synthetic_segmentation(split="train", length=4, size=48, num_classes=3)
    >>> data.transform = train_transform(32)
    >>> image, mask = data[0]
    >>> tuple(image.shape), tuple(mask.shape), mask.dtype, data.num_classes
    ((3, 32, 32), (32, 32), torch.int64, 4)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import joint
from .folder import load_image
from .joint import IGNORE_INDEX, Normalize, PhotometricJitter, RandomHorizontalFlip, RandomScale
from .joint import Compose as JointCompose
from .synthetic import SyntheticScenes
from .transforms import pil_to_tensor

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
JointTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class JointDataset(Dataset):
    """(image, mask) items of ``dataset`` passed through a joint ``transform`` (settable).

    Attributes ``num_classes`` and ``classes`` come from the caller.
    """

    def __init__(
        self,
        dataset: Dataset,
        classes: Sequence[str],
        transform: JointTransform | None = None,
    ) -> None:
        self.dataset, self.classes = dataset, list(classes)
        self.num_classes, self.transform = len(self.classes), transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        return self.transform(image, mask) if self.transform else (image, mask)


def synthetic_segmentation(
    *,
    split: str = "train",
    length: int | None = None,
    size: int = 64,
    num_classes: int = 6,
    difficulty: str = "default",
    num_targets: int = 2,
    seed: int = 0,
    transform: JointTransform | None = None,
) -> JointDataset:
    """Synthetic scenes as (image, mask); ``num_classes`` glyph classes + background.

    Returns:
        A dataset with ``num_classes + 1`` classes: ``["background", <glyph names>]``.
    """
    scenes = SyntheticScenes(
        split=split,
        length=length,
        size=size,
        num_classes=num_classes,
        difficulty=difficulty,
        seed=seed,
        task="segmentation",
        num_targets=num_targets,
    )
    return JointDataset(scenes, ["background", *scenes.classes], transform)


class VOCSegmentation(Dataset):
    """A VOC-layout segmentation folder.

    Args:
        root: folder holding ``JPEGImages``, ``SegmentationClass`` and ``ImageSets``.
        split: name of the list ``ImageSets/Segmentation/<split>.txt`` (train, val, …).
        num_classes: labels 0..num_classes-1 are classes (21 for VOC).
        classes: class names (default: VOC's when ``num_classes`` is 21, else numbers).
        transform: joint transform of (image, mask); settable later.
        ignore_index: label of ignored pixels (255).
        verify: load every item once when built, so every error shows up at once.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        *,
        num_classes: int = 21,
        classes: Sequence[str] | None = None,
        transform: JointTransform | None = None,
        ignore_index: int = IGNORE_INDEX,
        verify: bool = False,
    ) -> None:
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise ValueError(f"VOCSegmentation: split list not found: {list_file}")
        with open(list_file) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        if not ids:
            raise ValueError(f"VOCSegmentation: no image ids in {list_file}")
        self.files = []
        for image_id in ids:
            image = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
            mask = os.path.join(root, "SegmentationClass", f"{image_id}.png")
            for kind, path in (("image", image), ("mask", mask)):
                if not os.path.isfile(path):
                    raise ValueError(
                        f"VOCSegmentation: missing {kind} {path} (listed in {list_file})"
                    )
            self.files.append((image, mask))
        if classes is None:
            classes = VOC_CLASSES if num_classes == 21 else [str(c) for c in range(num_classes)]
        if len(classes) != num_classes:
            raise ValueError(f"VOCSegmentation: {len(classes)} class names for {num_classes}")
        self.root, self.split, self.classes = root, split, list(classes)
        self.num_classes, self.ignore_index, self.transform = num_classes, ignore_index, transform
        if verify:
            for index in range(len(self)):
                self.load(index)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The untransformed (image 3×H×W float in [0, 1], mask H×W int64) at ``index``."""
        image_path, mask_path = self.files[index]
        image = pil_to_tensor(load_image(image_path))
        try:
            with Image.open(mask_path) as pil_mask:
                mode = pil_mask.mode
                if mode not in ("P", "L"):
                    raise ValueError(
                        f"VOCSegmentation: mask {mask_path} has mode {mode!r}; expected an index "
                        "PNG (mode 'P' or 'L') whose values are class ids"
                    )
                values = np.array(pil_mask)  # palette indices in mode P: the class ids
        except (OSError, SyntaxError) as err:
            raise ValueError(f"VOCSegmentation: cannot read mask {mask_path}: {err}") from err
        mask = torch.from_numpy(values.astype(np.int64))
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"VOCSegmentation: mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but image "
                f"{image_path} is {image.shape[2]}×{image.shape[1]} (width×height)"
            )
        bad = mask[(mask >= self.num_classes) & (mask != self.ignore_index)]
        if bad.numel():
            raise ValueError(
                f"VOCSegmentation: mask {mask_path} has label {int(bad[0])} outside "
                f"0..{self.num_classes - 1} (and not the ignore index {self.ignore_index})"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        return self.transform(image, mask) if self.transform else (image, mask)

    def __repr__(self) -> str:
        return f"VOCSegmentation(root={self.root!r}, split={self.split!r}, items={len(self)})"


# Joint transforms: the shared stack (``joint.py``); a crop pads short sides by default here.


class RandomCrop(joint.RandomCrop):
    """A random ``size`` crop; sides shorter than the crop are padded first (bottom/right):
    the image with ``fill``, the mask with ``ignore_index`` (see :class:`joint.RandomCrop`)."""

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        fill: float | Sequence[float] = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(size, pad_if_needed=True, fill=fill, ignore_index=ignore_index)


def train_transform(
    crop_size: int | Sequence[int],
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    jitter: float = 0.3,
    ignore_index: int = IGNORE_INDEX,
) -> JointCompose:
    """The training pipeline: scale, crop (mean/ignore padding), flip, jitter, normalise."""
    return JointCompose(
        [
            RandomScale(scale),
            RandomCrop(crop_size, fill=tuple(mean), ignore_index=ignore_index),
            RandomHorizontalFlip(),
            PhotometricJitter(jitter, jitter, jitter),
            Normalize(mean, std),
        ]
    )
