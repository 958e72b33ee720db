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
- Transforms take and return ``(image, mask)``: image float 3×H×W, mask int64 H×W. Geometric
  ones move both (bilinear image, nearest mask); photometric ones and ``Normalize`` touch the
  image only. Random draws use torch's global generator.

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
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .folder import load_image
from .synthetic import SyntheticScenes
from .transforms import pil_to_tensor

IGNORE_INDEX = 255
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


# Joint transforms ---------------------------------------------------------------------------


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class JointCompose:
    """Applies joint transforms in order."""

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask


class RandomScale:
    """Resizes both by a factor drawn uniformly from ``scale`` (bilinear image, nearest mask).

    The mask uses ``"nearest-exact"`` sampling (pixel centres), the grid the bilinear image
    resize uses, so labels stay aligned with the image.
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomScale: need 0 < low <= high, got {scale!r}")
        self.scale = tuple(scale)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        factor = _uniform(*self.scale)
        height, width = mask.shape
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
        return image, mask[0, 0].long()


class RandomCrop:
    """A random ``size`` crop; sides shorter than the crop are padded first (bottom/right).

    Args:
        size: crop (height, width) or one side.
        fill: image padding, one value or one per channel (e.g. the dataset mean, which is 0
            after normalisation).
        ignore_index: mask padding, so padded pixels don't count in the loss or metrics.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        fill: float | Sequence[float] = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill, self.ignore_index = fill, ignore_index

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        crop_h, crop_w = self.size
        height, width = mask.shape
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            fill = torch.as_tensor(self.fill, dtype=image.dtype).reshape(-1, 1, 1)
            padded = fill.expand(image.shape[0], height + pad_h, width + pad_w).clone()
            padded[:, :height, :width] = image
            image = padded
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            height, width = mask.shape
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return (
            image[:, top : top + crop_h, left : left + crop_w],
            mask[top : top + crop_h, left : left + crop_w],
        )


class RandomHorizontalFlip:
    """Mirrors both with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()).item() < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


class PhotometricJitter:
    """Brightness, contrast and saturation jitter of the image (values in [0, 1]); mask as is.

    Each factor is drawn uniformly from [1 − s, 1 + s]; brightness scales the image, contrast
    blends with its mean grey level, saturation with its per-pixel grey; clamped to [0, 1].
    """

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3):
        self.strengths = (brightness, contrast, saturation)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        brightness, contrast, saturation = (_uniform(1 - s, 1 + s) for s in self.strengths)
        weights = image.new_tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)
        image = image * brightness
        grey = (image * weights).sum(0, keepdim=True)  # 1×H×W
        image = grey.mean() + (image - grey.mean()) * contrast
        grey = (image * weights).sum(0, keepdim=True)
        image = grey + (image - grey) * saturation
        return image.clamp(0, 1), mask


class Normalize:
    """(image − mean) / std per channel; mask as is."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (image - self.mean) / self.std, mask


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
