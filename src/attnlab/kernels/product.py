"""The gate product on the kernels: out = x · M_c(x) · M_s(x · M_c(x)), optionally followed by
a residual block's tail, relu(out + shortcut), in the same pass.

A textbook CBAM (Woo et al., arXiv 1807.06521) reads and rewrites the block's output several
times: pooling, ``x * M_c``, pooling that product again, another product; autograd saves the
products and its backward writes a full-size gradient per path before summing them. Here each
full-size pass is one kernel call and the small layers (the MLP, the k×k conv, the BatchNorm,
the sigmoid: the module's own, run by PyTorch) sit between them in the same autograd graph::

    x ─ ChannelPool ─ avg, max ─ MLP ─ cw ─┬─ SpatialPool ─ mean, max ─ conv ─ sw ─┐
    x ──────────────────────────────────────┴───────────────────────── Product(x, cw, sw) ─ out

- forward: the channel pool (one read of x), the spatial pool of x·M_c (one read), the product
  (one read, one write); nothing full-size is saved besides x;
- backward, in the order autograd runs it: Product, one read of the gradient and x for ∂L/∂M_s
  and its share of ∂L/∂M_c (the tail's ReLU mask applied in the same pass); the conv's own
  backward; SpatialPool, one read of x for the pools' share of ∂L/∂M_c; the MLP's backward;
  ChannelPool, ∂L/∂x with every term in one pass (one read of the gradient and x, one write).
  Max pools split their gradient evenly among tied entries, as ``amax`` does.

The last pass needs what the later functions' backwards computed (the masked gradient, the
spatial pools' terms). Each earlier function outputs a storage-free "link" tensor that a later
one takes as input, and the later one returns those terms as the link's gradient: they reach
the earlier backward through autograd itself, exactly as this backward call computed them.
Since the small layers are in the graph, a loss on a tapped attention map is differentiated
through them to x as on the reference path.

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
from torch.autograd.function import once_differentiable

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
    if shortcut is not None:
        if shortcut.shape != x.shape or shortcut.dtype != x.dtype or shortcut.device != x.device:
            raise ValueError(
                f"kernels.gate: the shortcut must match x ({tuple(x.shape)}, {x.dtype}, "
                f"{x.device}), got {tuple(shortcut.shape)}, {shortcut.dtype}, {shortcut.device}"
            )
        shortcut = shortcut.contiguous()
    x = x.contiguous()
    shared = _Shared(ops_for(x))
    if torch.is_grad_enabled():
        return _graph(shared, x, spec, shortcut)
    ops, (b, c, h, w) = shared.ops, x.shape
    cw, sw = x.new_ones(b, c), None
    if spec.channel is not None:
        avg, mx, _ = ops.channel_pool(x, spec.channel_max)
        cw = spec.channel(avg, mx if spec.channel_max else None).contiguous()
    if spec.spatial is not None:
        mean, mx, _ = ops.spatial_pool(x, cw)
        sw = spec.spatial(mean.view(b, 1, h, w), mx.view(b, 1, h, w)).reshape(b, h * w)
    return _apply(ops, x, cw, None if sw is None else sw.contiguous(), shortcut)


class _Shared:
    """What the functions of one call share: the kernels, and the weights made between them
    (detached), which an earlier function's backward reads."""

    __slots__ = ("ops", "cw", "sw", "smx")

    def __init__(self, ops) -> None:
        self.ops, self.cw, self.sw, self.smx = ops, None, None, None


def _graph(shared: _Shared, x, spec: GateSpec, shortcut):
    b, c, h, w = x.shape
    cw, sw, links, s_link = x.new_ones(b, c), None, [], None
    spatial = spec.spatial is not None
    if spec.channel is not None:
        avg, mx, g_link, s_link = _ChannelPool.apply(x, shared, spec.channel_max, spatial)
        cw = spec.channel(avg, mx if spec.channel_max else None).contiguous()
        links.append(g_link)
    shared.cw = cw.detach()
    if spatial:
        first = spec.channel is None
        mean, mx, g_link = _SpatialPool.apply(x, cw, s_link, shared, first)
        sw = spec.spatial(mean.view(b, 1, h, w), mx.view(b, 1, h, w)).reshape(b, h * w)
        sw = sw.contiguous()
        shared.sw = sw.detach()
        links.append(g_link)
    return _GateProduct.apply(x, cw, sw, shortcut, shared, not links, *links)


def _link(x: torch.Tensor, shape) -> torch.Tensor:
    """A tensor of ``shape`` without storage: the edge along which a later function's backward
    hands its terms (as this output's gradient) to an earlier one."""
    return x.new_zeros(()).expand(shape)


def _or_zeros(t: torch.Tensor | None, shape, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(shape) if t is None else t


def _apply(ops, x, cw, sw, shortcut):
    if shortcut is None:
        return ops.gate_apply(x, cw, sw)
    if not hasattr(ops, "gate_apply_relu"):  # (the Triton kernels: the tail in PyTorch)
        return torch.relu(ops.gate_apply(x, cw, sw) + shortcut)
    return ops.gate_apply_relu(x, cw, sw, shortcut)


def _grad_product(ops, grad, x, cw, sw, out):
    """(g masked by the tail's ReLU where ``out`` is given, ∂L/∂sw or None, Σ_p g·x·sw)."""
    if hasattr(ops, "gate_grad_product"):
        g, dsw, dcw = ops.gate_grad_product(grad, x, cw, sw, out)
        return (grad if out is None else g), (None if sw is None else dsw), dcw
    # (the Triton kernels: the same terms from their general passes, zero pool terms)
    g = grad if out is None else torch.ops.aten.threshold_backward(grad, out, 0)
    if sw is None:
        return g, None, ops.gate_grad_channel(g, x, cw, None, None, None, None)
    z = torch.zeros_like(sw)
    return g, ops.gate_grad_spatial(g, x, cw), ops.gate_grad_channel(g, x, cw, sw, z, z, z)


def _grad_pool(ops, x, cw, sw, sa, se, smx):
    """The spatial pools' share of ∂L/∂cw: Σ_p x·(sa + [x·cw == smx]·se)."""
    if hasattr(ops, "gate_grad_pool"):
        return ops.gate_grad_pool(x, cw, sa, se, smx)
    return ops.gate_grad_channel(torch.zeros_like(x), x, cw, sw, sa, se, smx)  # (Triton)


def _grad_input(shared: _Shared, g, x, sa=None, se=None, ca=None, ce=None, cmx=None):
    """∂L/∂x in one pass: every term the later backwards and the pools' own gave."""
    b, c, h, w = x.shape
    g = _or_zeros(g, x.shape, x)
    ca, ce, cmx = (_or_zeros(t, (b, c), x) for t in (ca, ce, cmx))
    spatial = (None,) * 4
    if shared.sw is not None:
        sa, se = (_or_zeros(t, (b, h * w), x) for t in (sa, se))
        spatial = (shared.sw, sa, se, shared.smx)
    return shared.ops.gate_grad_input(g, x, shared.cw, *spatial, ca, ce, cmx)


class _ChannelPool(torch.autograd.Function):
    """x → the channel pools (avg, max: B×C), the link for g (x's shape) and the one for the
    spatial pools' terms (2×B×P); backward: ∂L/∂x."""

    @staticmethod
    def forward(ctx, x, shared, with_max, spatial):
        ctx.set_materialize_grads(False)
        avg, mx, cnt = shared.ops.channel_pool(x, with_max)
        b, c, h, w = x.shape
        g_link = _link(x, x.shape)
        s_link = _link(x, (2, b, h * w)) if spatial else x.new_empty(0)
        if not with_max:
            ctx.mark_non_differentiable(mx)
        if not spatial:
            ctx.mark_non_differentiable(s_link)
        ctx.shared, ctx.cnt, ctx.with_max = shared, cnt, with_max
        ctx.save_for_backward(x, mx)
        return avg, mx, g_link, s_link

    @staticmethod
    @once_differentiable
    def backward(ctx, davg, dmx, g, terms):
        x, mx = ctx.saved_tensors
        p = x.shape[2] * x.shape[3]
        ca = None if davg is None else (davg / p).contiguous()
        ce = cmx = None
        if dmx is not None and ctx.with_max:
            ce, cmx = (dmx / ctx.cnt).contiguous(), mx
        sa, se = (None, None) if terms is None else (terms[0], terms[1])
        return _grad_input(ctx.shared, g, x, sa, se, ca, ce, cmx), None, None, None


class _SpatialPool(torch.autograd.Function):
    """(x, cw) → the spatial pools of x·cw (mean, max: B×P) and the link for g; backward: the
    pools' share of ∂L/∂cw, their terms for the channel pool's backward (as the gradient of its
    link), and ∂L/∂x where no channel gate comes first."""

    @staticmethod
    def forward(ctx, x, cw, s_link, shared, first):
        ctx.set_materialize_grads(False)
        mean, mx, cnt = shared.ops.spatial_pool(x, cw)
        shared.smx = mx.detach()
        ctx.shared, ctx.cnt, ctx.first = shared, cnt, first
        ctx.save_for_backward(x, cw)
        return mean, mx, _link(x, x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dmean, dmax, g):
        x, cw = ctx.saved_tensors
        shared, (b, c, h, w) = ctx.shared, x.shape
        sa = _or_zeros(None if dmean is None else dmean / c, (b, h * w), x).contiguous()
        se = _or_zeros(None if dmax is None else dmax / ctx.cnt, (b, h * w), x).contiguous()
        needs = ctx.needs_input_grad
        dcw = terms = dx = None
        if needs[1]:
            dcw = _grad_pool(shared.ops, x, cw, shared.sw, sa, se, shared.smx)
        if needs[2]:
            terms = torch.stack((sa, se))
        if ctx.first and needs[0]:
            dx = _grad_input(shared, g, x, sa, se)
        return dx, dcw, terms, None, None


class _GateProduct(torch.autograd.Function):
    """(x, cw, sw[, shortcut]) → the product (and the tail); backward: ∂L/∂sw, the product's
    share of ∂L/∂cw, the masked gradient (for the shortcut and the links), and ∂L/∂x where
    there are no pools."""

    @staticmethod
    def forward(ctx, x, cw, sw, shortcut, shared, alone, *links):
        ctx.set_materialize_grads(False)
        out = _apply(shared.ops, x, cw, sw, shortcut)
        ctx.shared, ctx.alone = shared, alone
        ctx.save_for_backward(x, cw, sw, out if shortcut is not None else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        needs = ctx.needs_input_grad
        if grad is None:
            return (None,) * len(needs)
        x, cw, sw, out = ctx.saved_tensors
        g, dsw, dcw = _grad_product(ctx.shared.ops, grad.contiguous(), x, cw, sw, out)
        dx = _grad_input(ctx.shared, g, x) if ctx.alone and needs[0] else None
        keep = [dx, dcw, dsw, g, None, None] + [g] * (len(needs) - 6)
        return tuple(t if n else None for t, n in zip(keep, needs, strict=True))
