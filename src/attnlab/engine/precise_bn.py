"""Precise BatchNorm: recompute the running statistics before evaluation.

BatchNorm normalises with batch statistics while training and with running averages at
evaluation. Those averages are exponential moving averages with the layer's ``momentum``:
after ``s`` steps a share ``(1 - momentum)^s`` of the initial values (mean 0, variance 1) is
still in them, and the rest is weighted towards batches seen while the weights were still
changing. With a small momentum (CBAM's official code uses 0.01 in its spatial gate) or a
short schedule, evaluation therefore normalises with statistics that no current batch has.

Precise BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576, Sec. 3; used
in Detectron2 and pycls) fixes this without touching any module's preset: with the weights
frozen, run a few hundred training images through the model in training mode and set every
running mean and variance to the equal-weight average of their batch statistics
(``momentum=None``, PyTorch's cumulative moving average), then restore each module's momentum.

The recomputation runs inside ``torch.random.fork_rng``, so random augmentation while it
draws its images does not change the training run's random stream: a run with precise BN
trains exactly the same weights as one without; only the statistics evaluation uses differ.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from attnlab.engine.precise_bn import update_bn_stats
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.01))
    >>> batches = [(torch.randn(8, 3, 4, 4) * 3 + 5, torch.zeros(8)) for _ in range(4)]
    >>> update_bn_stats(model, batches, num_images=32)
    32
    >>> model[1].momentum  # the preset is kept
    0.01
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """Every normalisation layer of ``model`` that keeps running statistics (BatchNorm, and
    InstanceNorm with ``track_running_stats``)."""
    return [
        m
        for m in model.modules()
        if getattr(m, "track_running_stats", False)
        and getattr(m, "running_mean", None) is not None
        and hasattr(m, "momentum")
    ]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    batches: Iterable,
    num_images: int,
    *,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> int:
    """Recomputes the running statistics of every BN layer from up to ``num_images`` images.

    Args:
        model: the network (its weights are not changed; its train/eval mode is restored).
        batches: an iterable of ``(images, labels)`` or of image tensors, e.g. a training
            DataLoader; it is read until ``num_images`` images have been seen or it ends.
        num_images: how many images to average over (≥ 1).
        device: where to move the images (default: where the model's first parameter is).
        channels_last: run in channels-last memory layout (as the training loop does).

    Returns:
        The number of images used (0 when the model has no BN layer, which is then untouched).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"precise_bn: num_images must be an integer >= 1, got {num_images!r}")
    layers = bn_modules(model)
    if not layers:
        return 0
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    momenta = [m.momentum for m in layers]
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every batch counts equally
        model.train()
        with torch.random.fork_rng(devices=[]):
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(images, torch.Tensor):
                    raise TypeError(
                        f"precise_bn: expected batches of image tensors or (images, labels), "
                        f"got {type(images).__name__}"
                    )
                images = images[: num_images - seen].to(device)
                if channels_last and images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                model(images)
                seen += len(images)
                if seen >= num_images:
                    break
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("precise_bn: the batches held no images")
    return seen


def update_bn_stats_from_dataset(
    model: nn.Module,
    dataset: Dataset,
    num_images: int,
    *,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> int:
    """:func:`update_bn_stats` over the first ``num_images`` items of ``dataset`` (all of it if
    smaller), in order, with the dataset's own transform (so training augmentation applies).

    A fixed subset, read by its own loader, leaves the training loader's shuffling untouched.
    ``num_images=0`` does nothing and returns 0 (precise BN off).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"precise_bn: num_images must be an integer >= 0, got {num_images!r}")
    count = min(num_images, len(dataset))
    if count == 0:
        return 0
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
    return update_bn_stats(model, loader, count, device=device, channels_last=channels_last)
