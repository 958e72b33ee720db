"""Raw-torch building blocks for the reference-equation tests (no attnlab code).

Shared by test_reference_gates.py and test_reference_danet.py; see the module docstring of
test_reference_gates.py for what the references check and how.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RTOL, ATOL = 1e-6, 1e-9
DTYPE = torch.float64

# --------------------------------------------------------------------------------------------
# Shared reference helpers (raw torch only)
# --------------------------------------------------------------------------------------------


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def randomize_(module: nn.Module, seed: int, std: float = 0.5) -> nn.Module:
    """Random values for every parameter and BatchNorm running statistic; float64."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # BN affine parameters: keep the scale away from 0 so the branch matters.
                m.weight.copy_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=gen, dtype=DTYPE))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen, dtype=DTYPE))
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
    return module


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=DTYPE) * scale


def sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def relu(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(t, min=0.0)


def hswish(t: torch.Tensor) -> torch.Tensor:
    """h-swish(t) = t · ReLU6(t + 3) / 6."""
    return t * torch.clamp(t + 3.0, 0.0, 6.0) / 6.0


def softmax_rows(e: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis: exp(e_j) / Σ_j' exp(e_j') (shifted by the max for range)."""
    z = torch.exp(e - e.max(dim=-1, keepdim=True).values)
    return z / z.sum(dim=-1, keepdim=True)


def linear(v: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """v @ Wᵀ + b for v of shape (..., in)."""
    out = torch.einsum("oi,...i->...o", layer.weight, v)
    return out if layer.bias is None else out + layer.bias


def conv1x1(t: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1×1 convolution as a channel mixing: out[b,o,...] = Σ_c W[o,c] t[b,c,...] + b[o]."""
    assert conv.kernel_size == (1, 1)
    w = conv.weight[:, :, 0, 0]
    out = torch.einsum("oc,bc...->bo...", w, t)
    if conv.bias is not None:
        out = out + conv.bias.reshape((1, -1) + (1,) * (t.dim() - 2))
    return out


def batch_norm(t: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, training: bool):
    """BatchNorm over axis 1: batch statistics (biased variance) or running statistics."""
    shape = (1, -1) + (1,) * (t.dim() - 2)
    if training:
        dims = [0] + list(range(2, t.dim()))
        mean = t.mean(dim=dims, keepdim=True)
        var = ((t - mean) ** 2).mean(dim=dims, keepdim=True)
    else:
        mean = bn.running_mean.reshape(shape)
        var = bn.running_var.reshape(shape)
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight.reshape(shape) + bn.bias.reshape(shape)


def conv2d_taps(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """'Same' k×k cross-correlation with zero padding, as an explicit sum over kernel taps."""
    _, _, height, width = t.shape
    _, _, kh, kw = weight.shape
    padded = F.pad(t, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = torch.zeros(t.shape[0], weight.shape[0], height, width, dtype=t.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i : i + height, j : j + width]
            out = out + torch.einsum("oc,bchw->bohw", weight[:, :, i, j], patch)
    return out
