"""Which path a gate module takes: the fast kernels or its own PyTorch equations.

``ATTNLAB_BACKEND`` (read on every call with ``os.environ.get``) or :func:`set_backend` /
:func:`backend` choose:

- ``"auto"`` (default): on the CPU, the C++ kernels (:mod:`attnlab.kernels.cpu`) when the input
  is an NCHW-contiguous 4-D float32/float64 tensor outside autocast, ``torch.compile`` tracing
  and TorchScript, and the kernels build; on CUDA the reference path (the Triton kernels are
  tested in Triton's interpreter only, so they are opt-in).
- ``"fast"``: the same, and on CUDA the Triton kernels (:mod:`attnlab.kernels.triton`); a
  failed build or a missing Triton raises instead of falling back.
- ``"reference"``: always the modules' own PyTorch code.

Paper: CBAM, arXiv 1807.06521 (the gate whose passes the kernels fuse).

Example:
    >>> import torch
    >>> from attnlab import kernels
    >>> with kernels.backend("reference"):
    ...     kernels.enabled(torch.randn(1, 4, 3, 3))
    False
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

from . import cpu

BACKENDS = ("auto", "fast", "reference")
_FAST_DTYPES = (torch.float32, torch.float64)
_state: dict = {"backend": None, "triton": None, "triton_error": None}
_lock = threading.Lock()


def set_backend(name: str | None) -> None:
    """Chooses the path: ``"auto"``, ``"fast"``, ``"reference"``, or None for the environment's."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"attnlab backend must be one of {list(BACKENDS)}, got {name!r}")
    _state["backend"] = name


def get_backend() -> str:
    """The backend in force: set_backend's choice, else ``$ATTNLAB_BACKEND``, else ``"auto"``."""
    if _state["backend"] is not None:
        return _state["backend"]
    name = os.environ.get("ATTNLAB_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ATTNLAB_BACKEND must be one of {list(BACKENDS)}, got {name!r}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous choice on exit."""
    previous = _state["backend"]
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


def available() -> bool:
    """Whether the CPU kernels are loaded (builds them on the first call)."""
    return cpu.ops() is not None


def build_error() -> str | None:
    """Why the CPU kernels are unavailable (after a failed build), else None."""
    return cpu.error()


def enabled(x: torch.Tensor, module: torch.nn.Module | None = None) -> bool:
    """Whether ``module`` (a gate offering ``kernel_spec()``) should run ``x`` on the kernels."""
    name = get_backend()
    if name == "reference" or x.dim() != 4 or x.dtype not in _FAST_DTYPES or x.numel() == 0:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # (under torch.compile inductor fuses the reference path itself)
    if module is not None and _spec(module) is None:
        return False
    if x.is_cuda:
        if name != "fast" or torch.is_autocast_enabled("cuda"):
            return False
        if triton_ops() is None:
            raise RuntimeError(
                f"ATTNLAB_BACKEND=fast but the Triton kernels are unavailable: "
                f"{_state['triton_error']}"
            )
        return True
    if not x.is_cpu or torch.is_autocast_enabled("cpu") or not x.is_contiguous():
        return False
    if cpu.ops() is None:
        if name == "fast":
            raise RuntimeError(f"ATTNLAB_BACKEND=fast but the CPU kernels failed: {cpu.error()}")
        return False
    return True


def _spec(module: torch.nn.Module):
    spec = getattr(module, "kernel_spec", None)
    return None if spec is None else spec()


def triton_ops():
    """The Triton kernels' module, or None where Triton is missing (imported on first use)."""
    if _state["triton"] is None and _state["triton_error"] is None:
        with _lock:
            if _state["triton"] is None and _state["triton_error"] is None:
                try:
                    from .triton import gates
                except Exception as err:  # no triton, or one that does not import
                    _state["triton_error"] = f"{type(err).__name__}: {err}".splitlines()[0]
                else:
                    _state["triton"] = gates
    return _state["triton"]


def ops_for(x: torch.Tensor):
    """The full-size kernels for x's device: the C++ operators (CPU) or the Triton ones."""
    return cpu.ops() if x.is_cpu else triton_ops()
