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

With ``norm`` (a residual block's last ``BatchNorm2d``, see :func:`attnlab.kernels.fuse`), x is
the norm's input and the norm is folded in: BN(x) = a_c·x + t_c per channel
(:func:`attnlab.kernels.norm_tail.affine`), so the channel pools of BN(x) follow from x's row
moments (mean, and max_p(a·x + t) = a·max_p x + t for a > 0, a·min_p x + t for a < 0), the
channel gate's
product is x·(a·M_c) + t·M_c, and every full-size pass reads x with that per-(b, c) scale and
shift; the norm's statistics' gradient terms join the input gradient's pass.

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

from . import norm_tail
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


def folds(norm: nn.Module, module: nn.Module) -> bool:
    """Whether :func:`gate` can fold ``norm`` into ``module``'s gate: a gate with a kernel path
    and an exact ``BatchNorm2d`` (a subclass may change its forward)."""
    spec = module.kernel_spec() if hasattr(module, "kernel_spec") else None
    return spec is not None and type(norm) is nn.BatchNorm2d


def gate(
    module: nn.Module,
    x: torch.Tensor,
    shortcut: torch.Tensor | None = None,
    norm: nn.BatchNorm2d | None = None,
) -> torch.Tensor:
    """``module(x)`` on the kernels, relu(module(x) + shortcut) with ``shortcut``, and with
    ``norm`` the same of norm(x) (the norm folded in; its running statistics updated as its own
    forward does).

    Args:
        module: a gate whose ``kernel_spec()`` is not None (see :func:`attnlab.kernels.enabled`).
        x: B×C×H×W input on the kernels' terms (see :func:`attnlab.kernels.enabled`).
        shortcut: a tensor of x's shape, dtype, device and layout, added before a ReLU.
        norm: a ``BatchNorm2d`` that :func:`folds` accepts (CPU only).
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
    fold, factor = None, None
    params = [p for p in module.parameters() if p.requires_grad]
    if norm is not None:
        if not folds(norm, module) or not x.is_cpu:
            raise ValueError(f"kernels.gate: cannot fold {type(norm).__name__} into this gate")
        batch_stats = norm.training or norm.running_mean is None
        if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {tuple(x.shape)}"
            )
        fold = (norm, batch_stats, [])
        factor = norm_tail.running_update_factor(norm)
        params += [p for p in (norm.weight, norm.bias) if p is not None and p.requires_grad]
    if shortcut is not None:
        shortcut = shortcut.contiguous()
    if torch.is_grad_enabled() and (
        x.requires_grad or params or (shortcut is not None and shortcut.requires_grad)
    ):
        out = _GateProduct.apply(x, spec, shortcut, fold, *params)
    else:
        with torch.no_grad():
            cw, sw, cb, _ = _gates(ops_for(x), x, spec, fold, grad=False)
            out = _apply(ops_for(x), x, cw, sw, shortcut, cb)
    if factor is not None and fold[1]:
        norm_tail.update_running(norm, fold[2][0], factor, x.shape[0] * x.shape[2] * x.shape[3])
    return out


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_()


def _apply(ops, x, cw, sw, shortcut, cb=None):
    shift = {} if cb is None else {"cb": cb}  # (the Triton kernels take no shift)
    if shortcut is None:
        return ops.gate_apply(x, cw, sw, **shift)
    if not hasattr(ops, "gate_apply_relu"):  # (the Triton kernels: the tail in PyTorch)
        return torch.relu(ops.gate_apply(x, cw, sw) + shortcut)
    return ops.gate_apply_relu(x, cw, sw, shortcut, **shift)


def _folded_channel(ops, x, spec, fold, grad: bool):
    """With the norm folded: the channel product's scale a·M_c and shift t·M_c (B×C each), and
    what the backward needs (the graph's outputs, the moments' leaves, extreme, ties, mean)."""
    norm, batch_stats, holder = fold
    b, c = x.shape[:2]
    has_max = spec.channel is not None and spec.channel_max
    m, v, ext = ops.row_moments(x, has_max, grad)  # tie counts: for the backward only
    leaves = (_leaf(m), _leaf(v)) if grad else (m, v)
    with torch.set_grad_enabled(grad):
        a, t, stats = norm_tail.affine(norm, leaves, batch_stats, x.dtype)
        top = cnt = None
        if has_max:  # max_p(a·x + t): a·max x + t (a > 0), a·min x + t (a < 0), t (a = 0)
            up = a.detach().expand(b, c) > 0
            if grad:  # a = 0: the max ties everywhere, so its gradient is the mean's
                down = a.detach().expand(b, c) < 0
                top = _leaf(torch.where(up, ext[..., 0], torch.where(down, ext[..., 2], m)))
                cnt = torch.where(up, ext[..., 1], torch.where(down, ext[..., 3], 1))
            else:
                top = torch.where(up, ext[..., 0], ext[..., 2])
            leaves = (*leaves, top)
        if spec.channel is None:
            scale, shift = a.expand(b, c), t.expand(b, c)
        else:
            weights = spec.channel(leaves[0] * a + t, None if top is None else top * a + t)
            scale, shift = a * weights.to(x.dtype), t * weights.to(x.dtype)
    holder.append(stats)
    cw, cb = scale.detach().contiguous(), shift.detach().contiguous()
    extreme = None if top is None else top.detach().contiguous()
    return cw, cb, ((scale, shift), leaves, extreme, cnt, m)


def _gates(ops, x: torch.Tensor, spec: GateSpec, fold, *, grad: bool):
    """The channel weights and shift (B×C; shift None unless a norm is folded), the spatial
    weights (B×P or None) and what the backward needs."""
    b, c, h, w = x.shape
    cw, cb, sw, saved = x.new_ones(b, c), None, None, {}
    if fold is not None:
        cw, cb, saved["fold"] = _folded_channel(ops, x, spec, fold, grad)
    elif spec.channel is not None:
        avg, mx, cnt = ops.channel_pool(x, spec.channel_max)
        leaves = (_leaf(avg), _leaf(mx) if spec.channel_max else None) if grad else (avg, mx)
        with torch.set_grad_enabled(grad):
            weights = spec.channel(leaves[0], leaves[1] if spec.channel_max else None)
        cw = weights.detach().to(x.dtype).contiguous()
        saved["channel"] = (weights, leaves, mx if spec.channel_max else None, cnt)
    if spec.spatial is not None:
        shift = {} if cb is None else {"cb": cb}
        mean, mx, cnt = ops.spatial_pool(x, cw, **shift)
        leaves = (mean.view(b, 1, h, w), mx.view(b, 1, h, w))  # B×P → B×1×H×W
        leaves = tuple(map(_leaf, leaves)) if grad else leaves
        with torch.set_grad_enabled(grad):
            weights = spec.spatial(*leaves)
        sw = weights.detach().to(x.dtype).reshape(b, h * w).contiguous()  # B×1×H×W → B×P
        saved["spatial"] = (weights, leaves, mx, cnt)
    return cw, sw, cb, saved


def _grads(outputs, grad, leaves, params):
    """Gradients of a small graph's ``outputs`` w.r.t. its pooled leaves and the parameters."""
    wanted = [t for t in leaves if t is not None] + list(params)
    # retain_graph: a retained outer graph may run this backward again (gradcheck does).
    got = iter(torch.autograd.grad(outputs, wanted, grad, allow_unused=True, retain_graph=True))
    return [None if t is None else next(got) for t in leaves], list(got)


def _add(a: list, b: list) -> list:
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b, strict=True)]


class _GateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, shortcut, fold, *params):
        x = x.contiguous()
        ops = ops_for(x)
        cw, sw, cb, saved = _gates(ops, x, spec, fold, grad=True)
        out = _apply(ops, x, cw, sw, shortcut, cb)
        ctx.saved, ctx.params = saved, params
        ctx.save_for_backward(x, cw, sw, cb, out if shortcut is not None else None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, cw, sw, cb, out = ctx.saved_tensors
        ops = ops_for(x)
        b, c, h, w = x.shape
        shift = {} if cb is None else {"cb": cb}
        grad = grad.contiguous()
        if out is not None:  # the tail's ReLU: its mask, once; the shortcut's gradient
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        params, param_grads = ctx.params, [None] * len(ctx.params)
        sa = se = smx = None
        if "spatial" in ctx.saved:
            weights, leaves, smx, scnt = ctx.saved["spatial"]
            dsw = ops.gate_grad_spatial(grad, x, cw, **shift).view(b, 1, h, w).to(weights.dtype)
            (dmean, dmax), more = _grads(weights, dsw, leaves, params)
            param_grads = _add(param_grads, more)
            sa = (dmean.reshape(b, h * w) / c).to(x.dtype).contiguous()
            se = (dmax.reshape(b, h * w) / scnt).to(x.dtype).contiguous()
        ca, ce, cmx = (cw.new_zeros(b, c) for _ in range(3))
        norm_terms = {}
        if "fold" in ctx.saved:
            outputs, leaves, mx, cnt, m = ctx.saved["fold"]
            dcw, dcb = ops.gate_grad_affine(grad, x, cw, sw, sa, se, smx, cb)
            pairs = [(o, d) for o, d in zip(outputs, (dcw, dcb), strict=True) if o.requires_grad]
            dm = dv = dmx = None
            if pairs:  # (nothing to differentiate: eval mode, no affine, no channel gate)
                got, more = _grads(*zip(*pairs, strict=True), leaves, params)
                dm, dv, dmx = (*got, None)[:3]
                param_grads = _add(param_grads, more)
            if dm is not None:
                ca = (dm / (h * w)).contiguous()
            if dmx is not None:
                ce, cmx = (dmx / cnt).contiguous(), mx
            if dv is not None:  # the batch variance's term: 2(x − m)/P · ∂L/∂v
                norm_terms = {"cm": m, "cq": (2 * dv / (h * w)).contiguous()}
        if "channel" in ctx.saved:
            weights, leaves, mx, cnt = ctx.saved["channel"]
            dcw = ops.gate_grad_channel(grad, x, cw, sw, sa, se, smx).to(weights.dtype)
            (davg, dmx), more = _grads(weights, dcw, leaves, params)
            param_grads = _add(param_grads, more)
            if davg is not None:  # None when the gate reads the max pool only
                ca = (davg / (h * w)).to(x.dtype).contiguous()
            if dmx is not None:
                ce, cmx = (dmx / cnt).to(x.dtype).contiguous(), mx
        dx = None
        if ctx.needs_input_grad[0]:
            dx = ops.gate_grad_input(
                grad, x, cw, sw, sa, se, smx, ca, ce, cmx, **shift, **norm_terms
            )
        dshortcut = grad if out is not None and ctx.needs_input_grad[2] else None
        return (dx, None, dshortcut, None, *param_grads)
