"""Shared helpers of the kernel tests: random inputs with ties, module builders, one run."""

from __future__ import annotations

import copy

import torch

from attnlab import kernels
from attnlab.layers import CBAM, SpatialGate

# Module configurations that take the kernels: CBAM's presets and pools, its spatial gate alone.
BUILDERS = {
    "cbam": lambda c: CBAM(c),
    "cbam-paper": lambda c: CBAM(c, preset="paper"),
    "cbam-yolo": lambda c: CBAM(c, preset="yolo"),
    "cbam-avg-pool": lambda c: CBAM(c, pool_types=("avg",)),
    "cbam-max-pool": lambda c: CBAM(c, pool_types=("max",), kernel_size=3),
    "spatial-gate": lambda c: SpatialGate(c, kernel_size=3),
}


def build(key: str, channels: int, dtype: torch.dtype) -> torch.nn.Module:
    """A module whose spatial BatchNorm (if any) has a non-zero weight, so every path matters."""
    torch.manual_seed(1)
    module = BUILDERS[key](channels).to(dtype)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    return module


def rand(shape, dtype, seed=0, ties=False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=dtype)
    return (2 * t).round() / 2 if ties else t  # half-integers: many entries tie at each max


def run(module, x, grad, backend, shortcut=None):
    """Output, input gradient, parameter gradients and buffers after one training call."""
    module = copy.deepcopy(module)
    x = x.clone().requires_grad_()
    with kernels.backend(backend):
        if shortcut is None:
            y = module(x)
        elif backend == "reference":
            y = torch.relu(module(x) + shortcut)
        else:
            y = kernels.gate(module, x, shortcut)
        y.backward(grad)
    params = [p.grad for p in module.parameters()]
    return y.detach(), x.grad, params, [b.clone() for b in module.buffers()]
