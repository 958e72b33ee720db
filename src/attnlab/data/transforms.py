"""Image transforms on float tensors C×H×W, without torchvision.

Every transform is a plain callable on one image tensor (float, C×H×W, values in [0, 1] before
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

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _check_image(name: str, image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        got = (
            f"{image.dtype} tensor of shape {tuple(image.shape)}"
            if isinstance(image, torch.Tensor)
            else type(image).__name__
        )
        raise TypeError(f"{name}: expected a float tensor C×H×W, got {got}")


def _pair(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{name}: size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


class Compose:
    """Applies transforms in order.

    Args:
        transforms: callables taking and returning an image.
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """Zero-pads each side by ``padding``, then crops a random ``size`` window.

    Args:
        size: output size, an int (square) or (height, width).
        padding: zeros added on every side before cropping (4 for CIFAR-style augmentation).
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0) -> None:
        self.size = _pair("RandomCrop", size)
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.padding = padding

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("RandomCrop", image)
        if self.padding:
            image = F.pad(image, (self.padding,) * 4)
        height, width = image.shape[-2:]
        out_h, out_w = self.size
        if out_h > height or out_w > width:
            raise ValueError(
                f"RandomCrop: crop {out_h}×{out_w} is larger than the (padded) image "
                f"{height}×{width}"
            )
        top = int(torch.randint(0, height - out_h + 1, ()).item())
        left = int(torch.randint(0, width - out_w + 1, ()).item())
        return image[:, top : top + out_h, left : left + out_w]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirrors the image left-right with probability ``p``.

    Args:
        p: flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("RandomHorizontalFlip", image)
        # Always draw, so the random stream does not depend on p being 0 or 1.
        flip = torch.rand(()).item() < self.p
        return image.flip(-1) if flip else image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Bilinear resize with antialiasing (torchvision semantics for the size).

    Args:
        size: an int resizes the shorter side to ``size`` keeping the aspect ratio; a
            (height, width) pair resizes to exactly that.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        _pair("Resize", size)  # validates
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("Resize", image)
        height, width = image.shape[-2:]
        if isinstance(self.size, int):
            short, long = sorted((height, width))
            new_long = max(1, int(self.size * long / short))
            out = (self.size, new_long) if height <= width else (new_long, self.size)
        else:
            out = tuple(self.size)
        if out == (height, width):
            return image
        # interpolate wants a batch: C×H×W → 1×C×H×W and back.
        resized = F.interpolate(
            image[None], size=out, mode="bilinear", align_corners=False, antialias=True
        )
        return resized[0]

    def __repr__(self) -> str:
        return f"Resize(size={self.size!r})"


class CenterCrop:
    """Crops the central ``size`` window (zero-pads first if the image is smaller).

    Args:
        size: an int (square) or (height, width).
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair("CenterCrop", size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("CenterCrop", image)
        out_h, out_w = self.size
        height, width = image.shape[-2:]
        pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
        if pad_h or pad_w:
            image = F.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            height, width = image.shape[-2:]
        top, left = (height - out_h) // 2, (width - out_w) // 2
        return image[:, top : top + out_h, left : left + out_w]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class Normalize:
    """(image − mean) / std per channel.

    Args:
        mean: one value per channel.
        std: one positive value per channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32)
        self.std = torch.as_tensor(list(std), dtype=torch.float32)
        if self.mean.dim() != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean {list(mean)} and std {list(std)} differ in length")
        if (self.std <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image("Normalize", image)
        if image.shape[0] != self.mean.numel():
            raise ValueError(
                f"Normalize: {self.mean.numel()} channel statistics for an image of "
                f"{image.shape[0]} channels"
            )
        # C → C×1×1 so the statistics broadcast over H×W.
        mean = self.mean.to(image.dtype)[:, None, None]
        std = self.std.to(image.dtype)[:, None, None]
        return (image - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


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
