"""Image-folder datasets: ``root/<class>/<image>.{jpg,jpeg,png}``, read with PIL.

Classes are the sub-folder names in sorted order (label i is ``classes[i]``). Every file is
checked when the dataset is built (PIL's ``verify``), so a corrupt or non-image file is found
up front: by default it is an error naming the file; with ``on_error="skip"`` it is left out
with a logged warning. A file that passes the check but still fails to decode later is an
error naming it.

Example:
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from attnlab.data.folder import ImageFolder
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, name))
    ...     Image.new("RGB", (40, 30)).save(os.path.join(root, name, "0.png"))
    >>> data = ImageFolder(root, image_size=32)
    >>> data.classes, len(data), tuple(data[1][0].shape), data[1][1]
    (['cat', 'dog'], 2, (3, 32, 32), 1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import Resize, pil_to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Opens and fully decodes an image as ``mode``; ValueError naming ``path`` if it can't."""
    # PIL rather than torchvision.io.decode_image: it also reads BMP, TIFF and palette images
    # that image folders often hold, and guards against decompression bombs.
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _check_image_file(path: str) -> None:
    """Cheap integrity check (headers, PNG CRCs) without decoding the pixels."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types for bad files
        raise ValueError(f"cannot read image {path}: {err}") from err


class ImageFolder(Dataset):
    """Labelled images in class sub-folders.

    Args:
        root: folder with one sub-folder per class.
        transform: callable applied to each float image 3×H×W in [0, 1].
        image_size: if set, every image is first resized to exactly ``image_size`` ×
            ``image_size`` (so images of mixed sizes batch together).
        on_error: ``"raise"`` (default): a corrupt file is a ValueError naming it;
            ``"skip"``: it is left out with a logged warning.

    Attributes:
        classes: class names (sorted sub-folder names).
        num_classes: number of classes.
        samples: (path, label) pairs.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no class folders or no images, or a corrupt file with ``on_error="raise"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform: Callable | None = None,
        image_size: int | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"ImageFolder: on_error must be 'raise' or 'skip', got {on_error!r}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"ImageFolder: image_size must be a positive int, got {image_size!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder: no such folder: {root}")
        self.root = root
        self.classes = sorted(
            entry.name for entry in os.scandir(root) if entry.is_dir() and entry.name[0] != "."
        )
        if not self.classes:
            raise ValueError(f"ImageFolder: no class sub-folders in {root}")
        self.samples: list[tuple[str, int]] = []
        self.skipped: list[str] = []
        for label, name in enumerate(self.classes):
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
                dirnames.sort()  # os.walk order is the file system's: sort for stable labels
                for filename in sorted(filenames):
                    if not filename.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    path = os.path.join(dirpath, filename)
                    try:
                        _check_image_file(path)
                    except ValueError as err:
                        if on_error == "raise":
                            raise
                        log.warning("ImageFolder: skipping %s (%s)", path, err.__cause__ or err)
                        self.skipped.append(path)
                        continue
                    self.samples.append((path, label))
        if not self.samples:
            raise ValueError(
                f"ImageFolder: no readable {'/'.join(IMAGE_EXTENSIONS)} images under {root}"
            )
        # A class without images would be a class the model can never learn (torchvision's
        # ImageFolder refuses it too).
        found = {label for _, label in self.samples}
        empty = [name for label, name in enumerate(self.classes) if label not in found]
        if empty:
            raise ValueError(
                f"ImageFolder: class folder(s) without readable images: "
                f"{', '.join(os.path.join(root, name) for name in empty)}"
            )
        self.num_classes = len(self.classes)
        self.transform = transform
        self.image_size = image_size
        self._resize = Resize((image_size, image_size)) if image_size else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = pil_to_tensor(load_image(path))
        if self._resize is not None:
            image = self._resize(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images, {self.num_classes} classes)"
