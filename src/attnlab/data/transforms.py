"""Image transforms for classification: the joint stack (``attnlab.data.joint``, on
torchvision.transforms.v2) applied to one image tensor, and ``pil_to_tensor``.

Every transform is a callable on one image tensor (float, C×H×W, values in [0, 1] before
``Normalize``). Random transforms draw from torch's global generator only, so
``torch.manual_seed`` makes them reproducible, and DataLoader workers (which seed torch per
worker) get independent streams.

Example:
    >>> import torch
    >>> from attnlab.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
    >>> augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
    ...                    Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    >>> _ = torch.manual_seed(0)
    >>> augment(torch.rand(3, 32, 32)).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .joint import CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, Resize

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "pil_to_tensor",
]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a float32 tensor C×H×W in [0, 1].

    Grey-scale ("L") images give one channel; every other mode (palette, RGBA, CMYK, 16-bit…)
    is converted to RGB first.

    Example:
        >>> from PIL import Image
        >>> pil_to_tensor(Image.new("RGB", (5, 4), (255, 0, 0)))[:, 0, 0]
        tensor([1., 0., 0.])
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"pil_to_tensor: expected a PIL image, got {type(image).__name__}")
    if image.mode != "L":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    # H×W×C uint8 → C×H×W float in [0, 1].
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
