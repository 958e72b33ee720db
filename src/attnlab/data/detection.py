"""Detection data: synthetic scenes, VOC XML and YOLO txt layouts.

Every dataset yields ``(image, targets)``: a float image 3×H×W in [0, 1] and targets N×5
(class, x1, y1, x2, y2) in pixel-edge coordinates of that image (a box covering pixels 0..9
has x1 = 0, x2 = 10). A dataset's ``transform`` takes and returns such a pair;
:func:`collate_detection` stacks images and keeps targets as a list. The augmentations (YOLOv4,
Bochkovskiy et al., arXiv 2004.10934: letterbox, random scale/translate, flip, HSV jitter) are
joint v2 transforms in :mod:`attnlab.data.detection_transforms`; :func:`train_transform` and
:func:`eval_transform` (re-exported here) build the default pipelines.

- VOC (``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg``,
  ``root/ImageSets/Main/<split>.txt``): VOC's 1-based inclusive pixel indices become edges
  (x1 = xmin − 1, x2 = xmax); the ``difficult`` flag is kept in :meth:`VOCDetection.annotation`.
- YOLO (``root/images/<name>.<ext>``, ``root/labels/<name>.txt``; a line is
  ``class cx cy w h`` normalised to [0, 1]; no label file means no objects).

Malformed files (unparsable XML, unknown class, coordinates outside the image, wrong number of
fields, a missing image) raise ValueError naming the file, when the dataset is built.

Example:
    >>> from attnlab.data.detection import SyntheticDetection, train_transform
    >>> ds = SyntheticDetection(size=64, length=4, num_targets=2, transform=train_transform(64))
    >>> image, targets = ds[0]
    >>> tuple(image.shape), targets.shape[1], bool((targets[:, 3] <= 64).all())
    ((3, 64, 64), 5, True)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .detection_transforms import DetectionTransform, eval_transform, train_transform
from .synthetic import SyntheticScenes

# fmt: off
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
# fmt: on
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

Pair = tuple[Tensor, Tensor]
__all__ = [
    "VOC_CLASSES",
    "DetectionTransform",
    "SyntheticDetection",
    "VOCDetection",
    "YOLODetection",
    "collate_detection",
    "eval_transform",
    "parse_voc_xml",
    "parse_yolo_txt",
    "train_transform",
]


def collate_detection(batch: Sequence[Pair]) -> tuple[Tensor, list[Tensor]]:
    """(B×3×H×W images, list of B target tensors N×5) for a DataLoader."""
    return torch.stack([image for image, _ in batch]), [t for _, t in batch]


def _load_image(path: str) -> Tensor:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # H×W×3 → 3×H×W


# ---------------------------------------------------------------------------------------------
# Datasets


class SyntheticDetection(Dataset):
    """Detection view of :class:`~attnlab.data.synthetic.SyntheticScenes` (class glyphs boxed).

    Args:
        size: image side (a multiple of 32 for YOLOv4-tiny).
        transform: callable on (image, targets).
        **scene_kwargs: passed on (``split``, ``length``, ``num_classes``, ``num_targets``,
            ``difficulty``, ``seed``, …); ``task`` is always ``"detection"``.
    """

    def __init__(
        self, *, size: int = 64, transform: Callable | None = None, **scene_kwargs
    ) -> None:
        self.scenes = SyntheticScenes(size=size, task="detection", **scene_kwargs)
        self.classes, self.num_classes = self.scenes.classes, self.scenes.num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Pair:
        scene = self.scenes.scene(index)
        targets = torch.cat([scene.labels[:, None].float(), scene.boxes], 1)  # N×5
        image = scene.image
        return self.transform(image, targets) if self.transform else (image, targets)


def _annotation_file(record: dict[str, Any]) -> str:
    return f" {record['annotation']}" if record.get("annotation") else ""


class _FileDetection(Dataset):
    """Shared item logic: ``self.records`` of dicts with ``image``, ``boxes``, ``labels``."""

    records: list[dict[str, Any]]
    transform: Callable | None

    def __len__(self) -> int:
        return len(self.records)

    def annotation(self, index: int) -> dict[str, Any]:
        """The parsed annotation: ``image`` (path), ``boxes`` N×4, ``labels`` N, ``difficult`` N."""
        return self.records[index]

    def targets(self, index: int) -> Tensor:
        rec = self.records[index]
        return torch.cat([rec["labels"][:, None].float(), rec["boxes"]], 1)

    def __getitem__(self, index: int) -> Pair:
        record = self.records[index]
        image, targets = _load_image(record["image"]), self.targets(index)
        if "size" in record and tuple(image.shape[-2:]) != tuple(record["size"]):
            height, width = record["size"]
            raise ValueError(
                f"{record['image']}: the image is {image.shape[-1]}×{image.shape[-2]} but its "
                f"annotation{_annotation_file(record)} says {width}×{height}"
            )
        return self.transform(image, targets) if self.transform else (image, targets)


def _text(node: ET.Element, tag: str, path: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{path}: missing <{tag}>")
    return child.text.strip()


def parse_voc_xml(path: str, classes: Sequence[str]) -> dict[str, Any]:
    """Boxes (pixel edges), labels, difficult flags and image size of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: not a readable VOC XML file ({err})") from None
    try:
        size = root.find("size")
        if size is None:
            raise ValueError(f"{path}: missing <size>")
        width, height = int(_text(size, "width", path)), int(_text(size, "height", path))
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = _text(obj, "name", path)
            if name not in classes:
                raise ValueError(f"{path}: unknown class {name!r} (classes: {list(classes)})")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise ValueError(f"{path}: object {name!r} without <bndbox>")
            x1, y1, x2, y2 = (float(_text(bnd, k, path)) for k in ("xmin", "ymin", "xmax", "ymax"))
            x1, y1 = x1 - 1, y1 - 1  # 1-based inclusive indices → pixel edges
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise ValueError(
                    f"{path}: box of {name!r} ({x1 + 1:g}, {y1 + 1:g}, {x2:g}, {y2:g}) is empty "
                    f"or outside the {width}×{height} image"
                )
            boxes.append([x1, y1, x2, y2])
            labels.append(classes.index(name))
            flag = obj.find("difficult")
            difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    except ValueError as err:
        raise ValueError(str(err) if path in str(err) else f"{path}: {err}") from None
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "size": (height, width),
    }


class VOCDetection(_FileDetection):
    """PASCAL VOC layout (see the module docstring).

    Args:
        root: the folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets``.
        split: name of the list in ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``).
        classes: class names, index = label (default: the 20 VOC classes).
        keep_difficult: include difficult boxes in the training targets (they are always in
            :meth:`annotation`, for evaluation).
        transform: callable on (image, targets).
    """

    def __init__(
        self,
        root: str,
        split: str = "trainval",
        *,
        classes: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = False,
        transform: Callable | None = None,
    ) -> None:
        self.root, self.split, self.transform = root, split, transform
        self.classes, self.num_classes = list(classes), len(classes)
        self.keep_difficult = keep_difficult
        list_path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(list_path):
            raise ValueError(f"VOC split list not found: {list_path}")
        with open(list_path) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        self.records = []
        for image_id in ids:
            record = parse_voc_xml(os.path.join(root, "Annotations", f"{image_id}.xml"), classes)
            image = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
            if not os.path.isfile(image):
                raise ValueError(f"{image}: image listed in {list_path} is missing")
            annotation = os.path.join(root, "Annotations", f"{image_id}.xml")
            self.records.append({"id": image_id, "image": image, "annotation": annotation,
                                 **record})  # fmt: skip

    def targets(self, index: int) -> Tensor:
        targets = super().targets(index)
        return targets if self.keep_difficult else targets[~self.records[index]["difficult"]]


def parse_yolo_txt(path: str, num_classes: int, height: int, width: int) -> dict[str, Tensor]:
    """Boxes (pixels) and labels of one YOLO label file for an image of height × width."""
    boxes, labels = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {number}"
            if len(fields) != 5:
                raise ValueError(f"{where}: expected 5 fields (class cx cy w h), got {len(fields)}")
            try:
                cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
            except ValueError:
                raise ValueError(f"{where}: not numbers: {line.strip()!r}") from None
            if not 0 <= cls < num_classes:
                raise ValueError(f"{where}: class {cls} outside 0..{num_classes - 1}")
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            eps = 1e-6  # normalised coordinates written with limited precision
            if not (
                w > 0 and h > 0 and x1 >= -eps and y1 >= -eps and x2 <= 1 + eps and y2 <= 1 + eps
            ):
                raise ValueError(f"{where}: box {fields[1:]} is empty or outside the image")
            boxes.append(
                [max(x1, 0) * width, max(y1, 0) * height, min(x2, 1) * width, min(y2, 1) * height]
            )
            labels.append(cls)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "difficult": torch.zeros(len(labels), dtype=torch.bool),
    }


class YOLODetection(_FileDetection):
    """YOLO txt layout (see the module docstring).

    Args:
        root: the folder holding ``images`` and ``labels``.
        classes: class names, index = label.
        transform: callable on (image, targets).
    """

    def __init__(self, root: str, classes: Sequence[str], *, transform: Callable | None = None):
        self.root, self.transform = root, transform
        self.classes, self.num_classes = list(classes), len(classes)
        image_dir, label_dir = os.path.join(root, "images"), os.path.join(root, "labels")
        if not os.path.isdir(image_dir):
            raise ValueError(f"YOLO layout: image folder not found: {image_dir}")
        images = {
            os.path.splitext(n)[0]: os.path.join(image_dir, n)
            for n in sorted(os.listdir(image_dir))
            if n.lower().endswith(IMAGE_EXTENSIONS)
        }
        labels = sorted(os.listdir(label_dir)) if os.path.isdir(label_dir) else []
        for name in labels:
            if name.endswith(".txt") and os.path.splitext(name)[0] not in images:
                raise ValueError(
                    f"{os.path.join(label_dir, name)}: no matching image in {image_dir}"
                )
        self.records = []
        for stem, image in images.items():
            try:
                with Image.open(image) as img:
                    width, height = img.size
            except (OSError, SyntaxError, Image.DecompressionBombError) as err:
                raise ValueError(f"cannot read image {image}: {err}") from None
            label = os.path.join(label_dir, f"{stem}.txt")
            if os.path.isfile(label):
                record = parse_yolo_txt(label, self.num_classes, height, width)
            else:
                record = parse_yolo_txt(os.devnull, self.num_classes, height, width)
            self.records.append({"id": stem, "image": image, "size": (height, width), **record})
