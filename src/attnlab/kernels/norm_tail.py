"""A residual block's tail with its last BatchNorm folded in: relu(g ⊙ BN(y) + shortcut).

y is the block's last convolution's output, BN a ``BatchNorm2d``, g a channel gate read from
the global average pool of BN(y) (SE, ECA: ``kernel_spec()`` with a channel gate only) or 1
(a block without attention). In its textbook form the tail reads and writes full-size tensors
five times forward (the norm's statistics and its output, the pool, the gate product, the
addition, the ReLU); here the norm and the gate are one affine map per (sample, channel):

    m[b,c], v[b,c] = mean and variance of y[b,c] over positions          (one read of y)
    μ_c = mean_b m,  σ²_c = mean_b (v + (m − μ)²)    (training; else the running statistics)
    a_c = γ_c / √(σ²_c + ε),  t_c = β_c − μ_c a_c       so BN(y) = a_c y + t_c
    GAP(BN(y))[b,c] = a_c m[b,c] + t_c                   (the gate's descriptor, exactly)
    out = relu(y · a_c g[b,c] + t_c g[b,c] + shortcut)   (one read of y and the shortcut)

The small B×C graph (statistics, gate, products) is PyTorch's, in the same autograd graph as
the two full-size functions (the moments, the output pass). The backward is two passes: the
ReLU's mask with the per-row sums Σ d and Σ d·y (which give the gradients of the B×C scale and
shift), then, after the small graph's own backward, ∂L/∂y = d·a g + (y − m)·2∂L/∂v / P +
∂L/∂m / P, the moments' terms folded into the same pass; d reaches that pass as the gradient
of a storage-free link output of the moments (see :mod:`attnlab.kernels.product`). A loss on
the gate's tapped map is differentiated through it to y as on the reference path. Running
statistics are updated as ``BatchNorm2d`` updates them (momentum, or the cumulative average when
momentum is None; unbiased variance).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from attnlab import kernels
    >>> from attnlab.kernels import norm_tail
    >>> bn, y, s = nn.BatchNorm2d(8), torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    >>> ref = torch.relu(bn(y) + s)
    >>> _ = bn.running_mean.zero_(), bn.running_var.fill_(1), bn.num_batches_tracked.zero_()
    >>> out = norm_tail.apply(bn, None, y, s) if kernels.available() else ref
    >>> torch.allclose(out, ref, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from . import cpu


def gate_of(attn: nn.Module | None):
    """The channel gate (pooled B×C → weights B×C) the tail folds, None for no attention; raises
    ValueError where ``attn`` is not a channel gate read from an average pool."""
    if attn is None or isinstance(attn, nn.Identity):
        return None
    spec = attn.kernel_spec() if hasattr(attn, "kernel_spec") else None
    if spec is None or spec.channel is None or spec.channel_max or spec.spatial is not None:
        raise ValueError(f"norm_tail: {type(attn).__name__} is not an average-pool channel gate")
    return spec.channel


def foldable(norm: nn.Module, attn: nn.Module | None) -> bool:
    """Whether :func:`apply` takes this norm and attention: an exact ``nn.BatchNorm2d`` (a
    subclass may change its forward) and a gate :func:`gate_of` accepts."""
    if type(norm) is not nn.BatchNorm2d:
        return False
    try:
        gate_of(attn)
    except ValueError:
        return False
    return True


def apply(
    norm: nn.BatchNorm2d, attn: nn.Module | None, y: torch.Tensor, shortcut: torch.Tensor
) -> torch.Tensor:
    """relu(attn(norm(y)) + shortcut) on the CPU kernels (see the module doc).

    Args:
        norm: the block's last norm, a ``BatchNorm2d`` over y's channels.
        attn: None, ``nn.Identity`` or a channel gate (see :func:`gate_of`).
        y: the last convolution's output, a contiguous B×C×H×W float32/float64 CPU tensor.
        shortcut: the block's shortcut, y's shape, dtype and device.
    """
    ops, gate = cpu.ops(), gate_of(attn)
    if ops is None:
        raise RuntimeError(f"norm_tail: the CPU kernels are unavailable: {cpu.error()}")
    if shortcut.shape != y.shape or shortcut.dtype != y.dtype or shortcut.device != y.device:
        raise ValueError(
            f"norm_tail: the shortcut must match y ({tuple(y.shape)}, {y.dtype}, {y.device}), "
            f"got {tuple(shortcut.shape)}, {shortcut.dtype}, {shortcut.device}"
        )
    y, shortcut = y.contiguous(), shortcut.contiguous()
    batch_stats = norm.training or norm.running_mean is None
    b, c, h, w = y.shape
    if batch_stats and b * h * w == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {y.shape}")
    factor = _running_update_factor(norm)
    needs_moments = batch_stats or gate is not None
    if torch.is_grad_enabled():
        shared = _Shared()
        m, v, link = _Moments.apply(y, shared) if needs_moments else (None, None, None)
        scale, shift, stats = _affine(norm, gate, (m, v), batch_stats, y.dtype)
        scale_b, shift_b = (t.expand(b, -1).contiguous() for t in (scale, shift))
        shared.scale, shared.mean = scale_b.detach(), None if m is None else m.detach()
        links = () if link is None else (link,)
        out = _NormTail.apply(y, scale_b, shift_b, shortcut, shared, *links)
    else:
        moments = ops.row_moments(y) if needs_moments else None
        scale, shift, stats = _affine(norm, gate, moments, batch_stats, y.dtype)
        out = ops.affine_relu(y, _rows(scale, b), _rows(shift, b), shortcut)
    if factor is not None and batch_stats:
        _update_running(norm, stats, factor, b * h * w)
    return out


def _running_update_factor(norm: nn.BatchNorm2d) -> float | None:
    """As ``BatchNorm2d.forward``: counts the batch and returns the running average's factor
    (None where the running statistics are not updated)."""
    if not (norm.training and norm.track_running_stats):
        return None
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            return 1.0 / float(norm.num_batches_tracked)
    return norm.momentum if norm.momentum is not None else 0.0


def _update_running(norm: nn.BatchNorm2d, stats, factor: float, n: int) -> None:
    """As ``BatchNorm2d`` in training: the running averages of the batch's mean and unbiased
    variance over ``n`` values per channel."""
    mean, var = stats
    with torch.no_grad():
        norm.running_mean.mul_(1 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
        unbiased = var * (n / (n - 1))
        norm.running_var.mul_(1 - factor).add_(unbiased.to(norm.running_var.dtype), alpha=factor)


def _affine(norm, gate, moments, batch_stats: bool, dtype: torch.dtype):
    """The folded tail's scale a·g and shift t·g (C or B×C), with BN(y) = a_c·y + t_c, and the
    statistics (μ, σ²) the norm uses: the batch's from the per-row moments (m, v), B×C each, or
    the running ones."""
    if batch_stats:
        m, v = moments
        mean = m.mean(0)
        var = (v + (m - mean) ** 2).mean(0)
    else:
        mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
    a = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        a = a * norm.weight.to(dtype)
    t = -mean * a
    if norm.bias is not None:
        t = t + norm.bias.to(dtype)
    stats = (mean.detach(), var.detach())
    if gate is None:
        return a, t, stats
    g = gate(moments[0] * a + t, None).to(dtype)  # the gate reads GAP(BN(y)) = a·m + t
    return a * g, t * g, stats


def _rows(t: torch.Tensor, b: int) -> torch.Tensor:
    """A C or B×C tensor as a contiguous B×C one, detached."""
    return t.detach().expand(b, -1).contiguous()


class _Shared:
    """The B×C scale and row means (detached) the moments' backward reads."""

    __slots__ = ("scale", "mean")


class _Moments(torch.autograd.Function):
    """y → its per-row mean and variance (B×C each) and the link for d (y's shape); backward:
    ∂L/∂y with every term in one pass."""

    @staticmethod
    def forward(ctx, y, shared):
        ctx.set_materialize_grads(False)
        m, v = cpu.ops().row_moments(y)
        ctx.shared = shared
        ctx.save_for_backward(y)
        return m, v, y.new_zeros(()).expand(y.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dm, dv, d):
        (y,) = ctx.saved_tensors
        return _grad_y(ctx.shared, y, d, dm, dv), None


def _grad_y(shared: _Shared, y, d, dm=None, dv=None):
    """∂L/∂y = d·scale + ∂L/∂m / P + 2(y − m)·∂L/∂v / P (absent terms zero)."""
    zeros = torch.zeros_like(shared.scale)
    d = torch.zeros_like(y) if d is None else d
    dm = zeros if dm is None else dm
    dv = zeros if dv is None else dv
    m = zeros if shared.mean is None else shared.mean
    p = y.shape[2] * y.shape[3]
    q, r = (2 * dv / p).contiguous(), (dm / p).contiguous()
    return cpu.ops().affine_grad(d, y, shared.scale, m, q, r)


class _NormTail(torch.autograd.Function):
    """(y, scale, shift, shortcut) → relu(y·scale + shift + shortcut); backward: the ReLU's
    mask d (for the shortcut and the link), ∂L/∂scale = Σ_p d·y, ∂L/∂shift = Σ_p d, and ∂L/∂y
    where no moments were taken."""

    @staticmethod
    def forward(ctx, y, scale, shift, shortcut, shared, *links):
        ctx.set_materialize_grads(False)
        out = cpu.ops().affine_relu(y, scale, shift, shortcut)
        ctx.shared, ctx.alone = shared, not links
        ctx.save_for_backward(y, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        needs = ctx.needs_input_grad
        if grad is None:
            return (None,) * len(needs)
        y, out = ctx.saved_tensors
        d, s1, s2 = cpu.ops().relu_grad_sums(grad.contiguous(), out, y)
        dy = _grad_y(ctx.shared, y, d) if ctx.alone and needs[0] else None
        keep = [dy, s2, s1, d, None] + [d] * (len(needs) - 5)
        return tuple(t if n else None for t, n in zip(keep, needs, strict=True))
