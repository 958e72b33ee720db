"""The optional fast path of the gate modules: CPU kernels (C++/OpenMP) and Triton kernels.

Layers reach it by one call: ``if kernels.enabled(x, self): return kernels.gate(self, x)``.
Block-level fusion (a residual block's last BatchNorm folded into the gate's passes, its add and
ReLU in the gate's output pass) is an explicit model transformation, :func:`fuse` /
:func:`unfuse`. Selection: ``ATTNLAB_BACKEND`` (``auto``, ``fast``, ``reference``) or
:func:`backend`; see :mod:`attnlab.kernels.select`. Which modules use it and the figures
behind it: docs/performance.md. Paper: CBAM, arXiv 1807.06521.

Example:
    >>> import torch
    >>> from attnlab import kernels
    >>> kernels.get_backend() in kernels.BACKENDS
    True
"""

from .fuse import FusedTail, fuse, is_fused, unfuse
from .product import GateSpec, gate
from .select import (
    BACKENDS,
    available,
    backend,
    build_error,
    enabled,
    get_backend,
    set_backend,
)

__all__ = [
    "BACKENDS",
    "FusedTail",
    "GateSpec",
    "available",
    "backend",
    "build_error",
    "enabled",
    "fuse",
    "gate",
    "get_backend",
    "is_fused",
    "set_backend",
    "unfuse",
]
