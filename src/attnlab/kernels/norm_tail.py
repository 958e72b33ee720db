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

The small B×C graph (statistics, gate, products) is PyTorch's, kept for autograd. The backward
is two passes: the ReLU's mask with the per-row sums Σ d and Σ d·y (which give the gradients of
the B×C scale and shift), then ∂L/∂y = d·a g + (y − m)·2∂L/∂v / P + ∂L/∂m / P, the moments'
terms folded into the same pass. Running statistics are updated as ``BatchNorm2d`` updates them
(momentum, or the cumulative average when momentum is None; unbiased variance).

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
    moments = ops.row_moments(y) if batch_stats or gate is not None else None
    factor = _running_update_factor(norm)
    params = [p for p in _params(norm, attn) if p.requires_grad]
    if torch.is_grad_enabled() and (y.requires_grad or shortcut.requires_grad or params):
        holder: list = []
        out = _NormTail.apply(y, shortcut, norm, gate, moments, batch_stats, holder, *params)
        stats = holder[0]
    else:
        with torch.no_grad():
            scale, shift, stats = _affine(norm, gate, moments, batch_stats, y.dtype)
            out = ops.affine_relu(y, _rows(scale, b), _rows(shift, b), shortcut)
    if factor is not None and batch_stats:
        _update_running(norm, stats, factor, b * h * w)
    return out


def _params(norm: nn.BatchNorm2d, attn: nn.Module | None) -> list[torch.Tensor]:
    found = [t for t in (norm.weight, norm.bias) if t is not None]
    return found + ([] if attn is None else list(attn.parameters()))


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


class _NormTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, shortcut, norm, gate, moments, batch_stats, holder, *params):
        leaves = None if moments is None else tuple(t.detach().requires_grad_() for t in moments)
        with torch.enable_grad():
            scale, shift, stats = _affine(norm, gate, leaves, batch_stats, y.dtype)
        holder.append(stats)
        b = y.shape[0]
        scale_b = _rows(scale, b)
        out = cpu.ops().affine_relu(y, scale_b, _rows(shift, b), shortcut)
        ctx.graph = (scale, shift, leaves, params)
        ctx.save_for_backward(y, out, scale_b)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, out, scale_b = ctx.saved_tensors
        scale, shift, leaves, params = ctx.graph
        ops = cpu.ops()
        d, s1, s2 = ops.relu_grad_sums(grad.contiguous(), out, y)
        # ∂L/∂scale = Σ_p d·y, ∂L/∂shift = Σ_p d (B×C; summed over samples for a C-vector)
        pairs = [(t, g.sum(0) if t.dim() == 1 else g) for t, g in ((scale, s2), (shift, s1))]
        pairs = [(t, g) for t, g in pairs if t.requires_grad]
        wanted = [*(leaves or ()), *params]
        grads = [None] * len(wanted)
        if pairs and wanted:
            outputs, sums = zip(*pairs, strict=True)
            # retain_graph: a retained outer graph may run this backward again (gradcheck does).
            grads = list(
                torch.autograd.grad(outputs, wanted, sums, allow_unused=True, retain_graph=True)
            )
        n = len(leaves or ())
        dy = None
        if ctx.needs_input_grad[0]:
            zeros = torch.zeros_like(s1)
            dm, dv = grads[:2] if n else [None, None]
            dm = zeros if dm is None else dm
            dv = zeros if dv is None else dv
            m = leaves[0].detach() if n else zeros
            p = y.shape[2] * y.shape[3]
            dy = ops.affine_grad(d, y, scale_b, m, (2 * dv / p).contiguous(), (dm / p).contiguous())
        dshortcut = d if ctx.needs_input_grad[1] else None
        return (dy, dshortcut, None, None, None, None, None, *grads[n:])
