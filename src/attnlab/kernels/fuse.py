"""Block-level fusion: a residual block's tail, relu(attn(bn(y)) + shortcut), on the kernels.

:func:`fuse` rewires, by structure, the residual blocks of a model: a block with ``conv1``/
``bn1``, ``conv2``/``bn2`` (BasicBlock) and optionally ``conv3``/``bn3`` (Bottleneck), an
``nn.ReLU`` ``relu``, ``attn``, ``downsample`` and ``attention_site()`` naming its last norm,
whose attention is a gate with a kernel path (``kernel_spec()`` not None: CBAM, SE, ECA) or none
(``nn.Identity``). The block's class is swapped for a subclass whose forward hands the tail to
the kernels:

- SE, ECA and no attention: the last norm (an exact ``nn.BatchNorm2d``) is folded into the
  gate's passes (:mod:`attnlab.kernels.norm_tail`), and the addition and ReLU into its output
  pass: of the four full-size tensors the textbook tail writes (the norm's output, the gate's
  product, the sum, the ReLU), one is left.
- CBAM: the norm runs as itself; the gate's output pass (:func:`attnlab.kernels.gate`) reads
  the shortcut too and writes relu(out + shortcut), so the addition and ReLU disappear.

The backward applies the ReLU's mask once. No module is added or removed, so the state dict
keeps its keys and checkpoints load both ways; :func:`unfuse` restores the original classes.
Where the kernels are not enabled for the input (see :func:`attnlab.kernels.enabled`) the fused
forward computes the plain one. Forward hooks registered on a fused block's attention module or
its folded norm do not run (the attention's map taps do); call :func:`unfuse` before
registering such hooks, or fuse with ``fold_norm=False``.

Paper: CBAM (Woo et al., arXiv 1807.06521), the gate whose blocks this fuses.

Example:
    >>> import torch
    >>> import attnlab
    >>> from attnlab import kernels
    >>> model = attnlab.create_model("resnet20", attn="cbam").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> ref = model(x)
    >>> kernels.fuse(model)
    9
    >>> torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)
    True
    >>> kernels.unfuse(model)
    9
"""

from __future__ import annotations

import torch
from torch import nn

from . import norm_tail
from .product import gate
from .select import enabled

_BASIC = ("conv1", "relu", "attn", "bn1", "conv2", "bn2")
_BOTTLENECK = (*_BASIC, "conv3", "bn3")
_FUSED: dict[type, type] = {}


class FusedTail:
    """Mixin of the fused block classes: the block's forward with the tail in the gate's pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "conv3"):
            out = self.relu(self.bn2(self.conv2(out)))
            conv, norm = self.conv3, self.bn3
        else:
            conv, norm = self.conv2, self.bn2
        out = conv(out)
        if (
            norm_tail.foldable(norm, self.attn)
            and enabled(out)
            and out.is_cpu
            and shortcut.shape == out.shape
            and shortcut.dtype == out.dtype
        ):
            return norm_tail.apply(norm, self.attn, out, shortcut)
        if _gate_path(self.attn) and enabled(out, self.attn) and shortcut.shape == out.shape:
            return gate(self.attn, norm(out), shortcut)
        out = norm(out)
        return self.relu(self.attn(out) + shortcut)


def _fusable(block: nn.Module, fold_norm: bool) -> bool:
    if isinstance(block, FusedTail) or not hasattr(block, "attention_site"):
        return False
    names = _BOTTLENECK if hasattr(block, "conv3") else _BASIC
    if not all(hasattr(block, n) for n in (*names, "downsample")):
        return False
    if block.attention_site()[0] != names[-1]:  # the attention takes the last norm's output
        return False
    if not isinstance(block.relu, nn.ReLU):
        return False
    if fold_norm and norm_tail.foldable(getattr(block, names[-1]), block.attn):
        return True
    return _gate_path(block.attn)


def _gate_path(attn: nn.Module) -> bool:
    """Whether the tail runs in :func:`attnlab.kernels.gate`'s pass without norm folding: a gate
    with a spatial part (a channel gate alone gains too little there)."""
    spec = attn.kernel_spec() if hasattr(attn, "kernel_spec") else None
    return spec is not None and spec.spatial is not None


def _fused_class(cls: type) -> type:
    if cls not in _FUSED:
        _FUSED[cls] = type(f"Fused{cls.__name__}", (FusedTail, cls), {"__module__": __name__})
    return _FUSED[cls]


def fuse(model: nn.Module, *, fold_norm: bool = True) -> int:
    """Rewires ``model``'s recognised residual blocks in place; returns how many.

    Args:
        model: any module; its residual blocks are found by structure (see the module doc).
        fold_norm: fold the last ``BatchNorm2d`` of SE, ECA and attention-free blocks into
            the gate's passes (its own forward and hooks then do not run; its parameters and
            running statistics are used and updated as its forward would). False: those
            blocks are left as they are, and only CBAM blocks are fused.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"kernels.fuse: expected an nn.Module, got {type(model).__name__}")
    count = 0
    for block in model.modules():
        if _fusable(block, fold_norm):
            block.__class__ = _fused_class(type(block))
            count += 1
    return count


def unfuse(model: nn.Module) -> int:
    """Restores the blocks :func:`fuse` rewired; returns how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"kernels.unfuse: expected an nn.Module, got {type(model).__name__}")
    count = 0
    for block in model.modules():
        if isinstance(block, FusedTail):
            block.__class__ = type(block).__mro__[2]  # (FusedX, FusedTail, X, …)
            count += 1
    return count


def is_fused(model: nn.Module) -> bool:
    """Whether any block of ``model`` is fused."""
    return any(isinstance(m, FusedTail) for m in model.modules())
