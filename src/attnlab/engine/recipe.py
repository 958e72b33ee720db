"""The recipe pieces a TrainConfig describes: model, optimiser, learning-rate schedule.

- Weight decay only on weights of rank ≥ 2: never on biases, norm scales or scalar gains
  (γ, α), which decay would pull towards zero for no regularising benefit.
- Learning rate: linear warm-up over ``warmup_epochs``, then cosine decay to 0 or ×``gamma``
  at each milestone epoch. It is updated every iteration (not every epoch), so a 1-epoch
  warm-up is smooth, and a fractional ``warmup_epochs`` means what it says.

Example:
    >>> from attnlab.engine.config import TrainConfig
    >>> from attnlab.engine.recipe import lr_factor
    >>> config = TrainConfig(epochs=2, warmup_epochs=0.5, schedule="cosine")
    >>> [round(lr_factor(step, config, steps_per_epoch=4), 3) for step in range(8)]
    [0.5, 1.0, 1.0, 0.933, 0.75, 0.5, 0.25, 0.067]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..registry import create_model
from .config import TrainConfig


def build_model(config: TrainConfig, data_info: dict[str, Any]) -> nn.Module:
    """The configured model with the dataset's number of classes (and input channels)."""
    kwargs = dict(config.model_kwargs)
    kwargs["num_classes"] = int(data_info["num_classes"])
    if config.attn_kwargs:
        kwargs["attn_kwargs"] = config.attn_kwargs
    if config.stage_attn:
        kwargs["stage_attn"] = config.stage_attn
    if data_info.get("in_chans", 3) != 3:
        kwargs["in_chans"] = int(data_info["in_chans"])
    try:
        return create_model(config.model, attn=config.attn, **kwargs)
    except TypeError as err:  # an option the model or its attention does not take
        raise ValueError(f"TrainConfig: model {config.model!r} with these options: {err}") from err


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW, with weight decay on rank-≥2 weights only."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup_epochs``, then cosine to 0 or ×``gamma`` at each milestone epoch."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if config.schedule == "cosine":
        progress = min(1.0, max(0.0, step - warmup) / max(1.0, total - warmup))
        return factor * 0.5 * (1.0 + math.cos(math.pi * progress))
    milestones = config.milestones or sorted(
        {m for m in (round(0.5 * config.epochs), round(0.75 * config.epochs)) if m >= 1}
    )
    epoch = step // steps_per_epoch
    return factor * config.gamma ** sum(epoch >= m for m in milestones)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: call ``step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
    )
