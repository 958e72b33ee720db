"""One transform stack for images, masks and boxes, on torchvision.transforms.v2.

Each transform is a ``torchvision.transforms.v2.Transform``: one random draw per call
(``make_params``, from torch's global generator only, so ``torch.manual_seed`` makes a pipeline
reproducible and DataLoader workers get their own streams), applied to every input of the
sample by its type (``transform``): images (``tv_tensors.Image``, or a plain float tensor
C×H×W), masks (``tv_tensors.Mask``: nearest-pixel resampling, padding with the ignore label)
and boxes (``tv_tensors.BoundingBoxes``). A call with two plain tensors, a float image and an
integer H×W label map, treats the second as a mask and returns plain tensors (an input a
transform leaves alone is returned as the same object).

Classification uses these through ``attnlab.data.transforms``; segmentation through
``attnlab.data.segmentation``.

Example:
    >>> import torch
    >>> from attnlab.data.joint import Compose, RandomCrop, RandomHorizontalFlip
    >>> augment = Compose([RandomCrop(8, pad_if_needed=True), RandomHorizontalFlip(p=1.0)])
    >>> image, mask = torch.rand(3, 6, 10), torch.zeros(6, 10, dtype=torch.long)
    >>> image, mask = augment(image, mask)
    >>> tuple(image.shape), tuple(mask.shape), int((mask == 255).sum())
    ((3, 8, 8), (8, 8), 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IGNORE_INDEX = 255
Compose = v2.Compose


def _pair(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{name}: size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def is_image(inpt: Any) -> bool:
    """An image of the sample: a ``tv_tensors.Image`` or a plain tensor."""
    return isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor


def check_image(name: str, image: torch.Tensor) -> None:
    """Raises TypeError, naming transform ``name``, unless ``image`` is a float C×H×W tensor."""
    if image.dim() != 3 or not image.is_floating_point():
        raise TypeError(
            f"{name}: expected a float tensor C×H×W, got {image.dtype} tensor of shape "
            f"{tuple(image.shape)}"
        )


def sample_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(height, width) of the sample (its masks and images share it)."""
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Mask, tv_tensors.Image)) or type(inpt) is torch.Tensor:
            height, width = TF.get_size(inpt)
            return height, width
    raise TypeError("expected an image or mask tensor in the sample")


def _rewrap(like: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return tv_tensors.wrap(data, like=like) if isinstance(like, tv_tensors.TVTensor) else data


class JointTransform(v2.Transform):
    """Base: ``t(image)``, ``t(image, mask)`` with plain tensors, or any tv_tensors sample."""

    def forward(self, *inputs: Any) -> Any:
        plain_pair = (
            len(inputs) == 2
            and all(type(t) is torch.Tensor for t in inputs)
            and not inputs[1].is_floating_point()
            and inputs[1].dim() == 2
        )
        if not plain_pair:
            return super().forward(*inputs)
        image, mask = inputs
        out_image, out_mask = super().forward(image, tv_tensors.Mask(mask))
        if out_mask.data_ptr() == mask.data_ptr() and out_mask.shape == mask.shape:
            return out_image, mask  # untouched: the caller's own tensor
        return out_image, out_mask.as_subclass(torch.Tensor)


class RandomHorizontalFlip(JointTransform):
    """Mirrors the whole sample left-right with probability ``p`` (one draw, always made)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Always draw, so the random stream does not depend on p being 0 or 1.
        return {"flip": torch.rand(()).item() < self.p}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if is_image(inpt):
            check_image("RandomHorizontalFlip", inpt)
        return TF.horizontal_flip(inpt) if params["flip"] else inpt


class RandomCrop(JointTransform):
    """A random ``size`` window of the sample.

    Args:
        size: output size, an int (square) or (height, width).
        padding: zeros added on every side first (4 for CIFAR-style augmentation).
        pad_if_needed: pad sides shorter than the crop (bottom/right) instead of refusing.
        fill: image padding of ``pad_if_needed``, one value or one per channel (e.g. the
            dataset mean).
        ignore_index: mask padding, so padded pixels count in no loss or metric.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        *,
        pad_if_needed: bool = False,
        fill: float | Sequence[float] = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.size = _pair("RandomCrop", size)
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.padding, self.pad_if_needed = padding, pad_if_needed
        self.fill, self.ignore_index = fill, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = sample_size(flat_inputs)
        height, width = height + 2 * self.padding, width + 2 * self.padding
        out_h, out_w = self.size
        pad_h, pad_w = 0, 0
        if self.pad_if_needed:
            pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
        elif out_h > height or out_w > width:
            raise ValueError(
                f"RandomCrop: crop {out_h}×{out_w} is larger than the (padded) image "
                f"{height}×{width}"
            )
        top = int(torch.randint(0, height + pad_h - out_h + 1, ()).item())
        left = int(torch.randint(0, width + pad_w - out_w + 1, ()).item())
        return {"top": top, "left": left, "pad": (pad_h, pad_w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        top, left, (pad_h, pad_w) = params["top"], params["left"], params["pad"]
        out_h, out_w = self.size
        p = self.padding
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            inpt = TF.pad(inpt, [p, p, p + pad_w, p + pad_h]) if p or pad_h or pad_w else inpt
            return TF.crop(inpt, top, left, out_h, out_w)
        if isinstance(inpt, tv_tensors.Mask):
            data = inpt.as_subclass(torch.Tensor)
            if p or pad_h or pad_w:
                data = F.pad(data, (p, p + pad_w, p, p + pad_h), value=self.ignore_index)
            return _rewrap(inpt, data[..., top : top + out_h, left : left + out_w])
        if not is_image(inpt):
            return inpt
        check_image("RandomCrop", inpt)
        data = inpt.as_subclass(torch.Tensor)
        if p:
            data = F.pad(data, (p,) * 4)
        if pad_h or pad_w:
            height, width = data.shape[-2:]
            fill = torch.as_tensor(self.fill, dtype=data.dtype).reshape(-1, 1, 1)
            padded = fill.expand(data.shape[0], height + pad_h, width + pad_w).clone()
            padded[:, :height, :width] = data
            data = padded
        return _rewrap(inpt, data[:, top : top + out_h, left : left + out_w])


class RandomScale(JointTransform):
    """Resizes the sample by a factor drawn uniformly from ``scale``: bilinear images,
    ``nearest-exact`` masks (pixel centres, the grid the bilinear resize uses, so labels stay
    aligned with the image), boxes scaled."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomScale: need 0 < low <= high, got {scale!r}")
        self.scale = tuple(scale)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.scale
        factor = low + (high - low) * torch.rand(()).item()
        height, width = sample_size(flat_inputs)
        return {"size": (max(1, round(height * factor)), max(1, round(width * factor)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return TF.resize(inpt, list(size))
        if isinstance(inpt, tv_tensors.Mask):
            data = inpt.as_subclass(torch.Tensor)
            # interpolate wants N×C×H×W: H×W → 1×1×H×W and back.
            resized = F.interpolate(data[None, None].float(), size=size, mode="nearest-exact")
            return _rewrap(inpt, resized[0, 0].to(data.dtype))
        if not is_image(inpt):
            return inpt
        data = inpt.as_subclass(torch.Tensor)
        resized = F.interpolate(data[None], size=size, mode="bilinear", align_corners=False)
        return _rewrap(inpt, resized[0])


class PhotometricJitter(JointTransform):
    """Brightness, contrast and saturation jitter of images (values in [0, 1]).

    Each factor is drawn uniformly from [1 − s, 1 + s]; brightness scales the image, contrast
    blends with its mean grey level, saturation with its per-pixel grey; clamped to [0, 1].
    """

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3):
        super().__init__()
        self.strengths = (brightness, contrast, saturation)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        factors = []
        for strength in self.strengths:
            low, high = 1 - strength, 1 + strength
            factors.append(low + (high - low) * torch.rand(()).item())
        return {"factors": factors}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not is_image(inpt):
            return inpt
        brightness, contrast, saturation = params["factors"]
        image = inpt.as_subclass(torch.Tensor)
        weights = image.new_tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)
        image = image * brightness
        grey = (image * weights).sum(0, keepdim=True)  # 1×H×W
        image = grey.mean() + (image - grey.mean()) * contrast
        grey = (image * weights).sum(0, keepdim=True)
        image = grey + (image - grey) * saturation
        return _rewrap(inpt, image.clamp(0, 1))


class Normalize(JointTransform):
    """(image − mean) / std per channel; masks and boxes as they are.

    Args:
        mean: one value per channel.
        std: one positive value per channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32)
        self.std = torch.as_tensor(list(std), dtype=torch.float32)
        if self.mean.dim() != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean {list(mean)} and std {list(std)} differ in length")
        if (self.std <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not is_image(inpt):
            return inpt
        check_image("Normalize", inpt)
        image = inpt.as_subclass(torch.Tensor)
        if image.shape[0] != self.mean.numel():
            raise ValueError(
                f"Normalize: {self.mean.numel()} channel statistics for an image of "
                f"{image.shape[0]} channels"
            )
        # C → C×1×1 so the statistics broadcast over H×W.
        mean = self.mean.to(image.dtype)[:, None, None]
        std = self.std.to(image.dtype)[:, None, None]
        return _rewrap(inpt, (image - mean) / std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Resize(JointTransform):
    """Bilinear resize with antialiasing (masks: nearest-exact).

    Args:
        size: an int resizes the shorter side to ``size`` keeping the aspect ratio; a
            (height, width) pair resizes to exactly that.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        _pair("Resize", size)  # validates
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = sample_size(flat_inputs)
        if isinstance(self.size, int):
            short, long = sorted((height, width))
            new_long = max(1, int(self.size * long / short))
            out = (self.size, new_long) if height <= width else (new_long, self.size)
        else:
            out = tuple(self.size)
        return {"size": out, "same": out == (height, width)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["same"]:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return TF.resize(inpt, list(params["size"]))
        if isinstance(inpt, tv_tensors.Mask):
            data = inpt.as_subclass(torch.Tensor)
            resized = F.interpolate(data[None, None].float(), params["size"], mode="nearest-exact")
            return _rewrap(inpt, resized[0, 0].to(data.dtype))
        if not is_image(inpt):
            return inpt
        check_image("Resize", inpt)
        # interpolate wants a batch: C×H×W → 1×C×H×W and back.
        data = inpt.as_subclass(torch.Tensor)[None]
        resized = F.interpolate(
            data, size=params["size"], mode="bilinear", align_corners=False, antialias=True
        )
        return _rewrap(inpt, resized[0])


class CenterCrop(JointTransform):
    """The central ``size`` window (zero padding first if the sample is smaller).

    Args:
        size: an int (square) or (height, width).
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = _pair("CenterCrop", size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = sample_size(flat_inputs)
        out_h, out_w = self.size
        pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        top, left = (height + pad_h - out_h) // 2, (width + pad_w - out_w) // 2
        return {"pads": pads, "top": top, "left": left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out_h, out_w = self.size
        pads, top, left = params["pads"], params["top"], params["left"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            left_pad, right_pad, top_pad, bottom_pad = pads
            if any(pads):
                inpt = TF.pad(inpt, [left_pad, top_pad, right_pad, bottom_pad])
            return TF.crop(inpt, top, left, out_h, out_w)
        is_mask = isinstance(inpt, tv_tensors.Mask)
        if not (is_mask or is_image(inpt)):
            return inpt
        if not is_mask:
            check_image("CenterCrop", inpt)
        data = inpt.as_subclass(torch.Tensor)
        if any(pads):
            data = F.pad(data, pads, value=IGNORE_INDEX if is_mask else 0.0)
        return _rewrap(inpt, data[..., top : top + out_h, left : left + out_w])
