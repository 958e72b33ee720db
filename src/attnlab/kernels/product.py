"""The gate product on the kernels: out = x · M_c(x) · M_s(x · M_c(x)), optionally followed by
a residual block's tail, relu(out + shortcut), in the same pass.

A textbook CBAM (Woo et al., arXiv 1807.06521) reads and rewrites the block's output several
times: pooling, ``x * M_c``, pooling that product again, another product; autograd saves the
products and its backward writes a full-size gradient per path before summing them. Here each
full-size pass is one kernel call and the small layers (the MLP, the k×k conv, the BatchNorm,
the sigmoid: the module's own, run by PyTorch) sit between them:

- forward: the channel pool (one read of x), the spatial pool of x·M_c (one read), the product
  (one read, one write); nothing full-size is saved besides x;
- backward: ∂L/∂M_s (one read of the gradient and x), ∂L/∂M_c (one read), ∂L/∂x (one read,
  one write), the pools' terms folded into the last two. Max pools split their gradient evenly
  among tied entries, as ``amax`` does.

A gate module joins by offering ``kernel_spec()``, which returns a :class:`GateSpec` (or None
where its configuration has no kernel path).

Example:
    >>> import torch
    >>> from attnlab import kernels
    >>> from attnlab.layers import CBAM
    >>> cbam, x = CBAM(32), torch.randn(2, 32, 5, 7)
    >>> with kernels.backend("reference"):
    ...     ref = cbam(x)
    >>> out = kernels.gate(cbam, x) if kernels.enabled(x, cbam) else ref
    >>> torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .select import ops_for

ChannelFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
SpatialFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GateSpec(NamedTuple):
    """A gate's small layers, as the kernels call them.

    Attributes:
        channel: (avg B×C, max B×C or None) → channel weights M_c, B×C; None: no channel gate.
        channel_max: whether ``channel`` reads the max pool.
        spatial: (mean, max of x·M_c over channels, each B×1×H×W) → M_s, B×1×H×W; None: none.
    """

    channel: ChannelFn | None
    channel_max: bool
    spatial: SpatialFn | None


def gate(module: nn.Module, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x)`` on the kernels, or relu(module(x) + shortcut) with ``shortcut``.

    Args:
        module: a gate whose ``kernel_spec()`` is not None (see :func:`attnlab.kernels.enabled`).
        x: B×C×H×W input on the kernels' terms (see :func:`attnlab.kernels.enabled`).
        shortcut: a tensor of x's shape, dtype, device and layout, added before a ReLU.
    """
    spec = module.kernel_spec() if hasattr(module, "kernel_spec") else None
    if spec is None:
        raise ValueError(f"kernels.gate: {type(module).__name__} has no kernel path")
    if shortcut is not None and (
        shortcut.shape != x.shape or shortcut.dtype != x.dtype or shortcut.device != x.device
    ):
        raise ValueError(
            f"kernels.gate: the shortcut must match x ({tuple(x.shape)}, {x.dtype}, {x.device}), "
            f"got {tuple(shortcut.shape)}, {shortcut.dtype}, {shortcut.device}"
        )
    params = [p for p in module.parameters() if p.requires_grad]
    if shortcut is not None:
        shortcut = shortcut.contiguous()
    if torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in params)
        or (shortcut is not None and shortcut.requires_grad)
    ):
        return _GateProduct.apply(x, spec, shortcut, *params)
    with torch.no_grad():
        cw, sw, _ = _gates(ops_for(x), x, spec, grad=False)
        return _apply(ops_for(x), x, cw, sw, shortcut)


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_()


def _apply(ops, x, cw, sw, shortcut):
    if shortcut is None:
        return ops.gate_apply(x, cw, sw)
    if not hasattr(ops, "gate_apply_relu"):  # (the Triton kernels: the tail in PyTorch)
        return torch.relu(ops.gate_apply(x, cw, sw) + shortcut)
    return ops.gate_apply_relu(x, cw, sw, shortcut)


def _gates(ops, x: torch.Tensor, spec: GateSpec, *, grad: bool):
    """The channel and spatial weights (B×C, B×P or None) and what the backward needs."""
    b, c, h, w = x.shape
    cw, sw, saved = x.new_ones(b, c), None, {}
    if spec.channel is not None:
        avg, mx, cnt = ops.channel_pool(x, spec.channel_max)
        leaves = (_leaf(avg), _leaf(mx) if spec.channel_max else None) if grad else (avg, mx)
        with torch.set_grad_enabled(grad):
            weights = spec.channel(leaves[0], leaves[1] if spec.channel_max else None)
        cw = weights.detach().to(x.dtype).contiguous()
        saved["channel"] = (weights, leaves, mx if spec.channel_max else None, cnt)
    if spec.spatial is not None:
        mean, mx, cnt = ops.spatial_pool(x, cw)
        leaves = (mean.view(b, 1, h, w), mx.view(b, 1, h, w))  # B×P → B×1×H×W
        leaves = tuple(map(_leaf, leaves)) if grad else leaves
        with torch.set_grad_enabled(grad):
            weights = spec.spatial(*leaves)
        sw = weights.detach().to(x.dtype).reshape(b, h * w).contiguous()  # B×1×H×W → B×P
        saved["spatial"] = (weights, leaves, mx, cnt)
    return cw, sw, saved


def _grads(outputs, leaves, params, grad):
    """Gradients of a small graph's ``outputs`` w.r.t. its pooled leaves and the parameters."""
    wanted = [t for t in leaves if t is not None] + list(params)
    # retain_graph: a retained outer graph may run this backward again (gradcheck does).
    got = iter(torch.autograd.grad(outputs, wanted, grad, allow_unused=True, retain_graph=True))
    return [None if t is None else next(got) for t in leaves], list(got)


def _add(a: list, b: list) -> list:
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b, strict=True)]


class _GateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, shortcut, *params):
        x = x.contiguous()
        ops = ops_for(x)
        cw, sw, saved = _gates(ops, x, spec, grad=True)
        out = _apply(ops, x, cw, sw, shortcut)
        ctx.saved, ctx.params = saved, params
        ctx.save_for_backward(x, cw, sw, out if shortcut is not None else None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, cw, sw, out = ctx.saved_tensors
        ops = ops_for(x)
        b, c, h, w = x.shape
        grad = grad.contiguous()
        if out is not None:  # the tail's ReLU: its mask, once; the shortcut's gradient
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        params, param_grads = ctx.params, [None] * len(ctx.params)
        sa = se = smx = None
        if "spatial" in ctx.saved:
            weights, leaves, smx, scnt = ctx.saved["spatial"]
            dsw = ops.gate_grad_spatial(grad, x, cw).view(b, 1, h, w).to(weights.dtype)
            (dmean, dmax), more = _grads(weights, leaves, params, dsw)
            param_grads = _add(param_grads, more)
            sa = (dmean.reshape(b, h * w) / c).to(x.dtype).contiguous()
            se = (dmax.reshape(b, h * w) / scnt).to(x.dtype).contiguous()
        ca, ce, cmx = (cw.new_zeros(b, c) for _ in range(3))
        if "channel" in ctx.saved:
            weights, leaves, mx, cnt = ctx.saved["channel"]
            dcw = ops.gate_grad_channel(grad, x, cw, sw, sa, se, smx).to(weights.dtype)
            (davg, dmx), more = _grads(weights, leaves, params, dcw)
            param_grads = _add(param_grads, more)
            if davg is not None:  # None when the gate reads the max pool only
                ca = (davg / (h * w)).to(x.dtype).contiguous()
            if dmx is not None:
                ce, cmx = (dmx / cnt).to(x.dtype).contiguous(), mx
        dx = None
        if ctx.needs_input_grad[0]:
            dx = ops.gate_grad_input(grad, x, cw, sw, sa, se, smx, ca, ce, cmx)
        dshortcut = grad if out is not None and ctx.needs_input_grad[2] else None
        return (dx, None, dshortcut, *param_grads)
