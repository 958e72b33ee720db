"""What a model costs: parameters, multiply-accumulates, and measured latency.

MACs are the papers' "FLOPs" (ResNet-50 at 224×224: 3.86 G); they are counted by PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear layers, matmul/bmm, attention),
which reports 2 FLOPs per multiply-accumulate. Elementwise gates and pooling are not in this
count (they are a fraction of a percent of a ResNet's MACs, but not of its memory traffic,
which is why latency is measured rather than inferred).

Example:
    >>> import attnlab
    >>> from attnlab.bench import count_macs, count_params
    >>> model = attnlab.create_model("resnet50")
    >>> count_params(model)
    25557032
    >>> round(count_macs(model, (1, 3, 224, 224)) / 1e9, 2)
    4.09
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``input_shape``.

    Counted by ``FlopCounterMode`` (conv, linear, matmul, bmm, attention) as FLOPs / 2.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], *, warmup: int = 3, runs: int = 20
) -> float:
    """Median seconds of one forward pass (eval mode, no grad) over ``runs`` timed calls."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.randn(input_shape, device=device)
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + runs):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)
