"""The fast path for the gate modules (SE, ECA, CBAM, Coordinate Attention).

A textbook gate reads and rewrites the block's output several times: pooling, then ``x * w``,
then pooling the product again (CBAM), then another product; autograd saves the products and
its backward writes a full-size gradient per path before summing them. The fast path keeps the
small computations (the MLP, the 7×7 conv, the BatchNorm, the sigmoid — the module's own
layers, run by PyTorch) and replaces each full-size pass by a fused C++/OpenMP kernel:

- forward: one read of x per pooling stage, one read of x and one write of the output for the
  gate product (CBAM: 3 reads, 1 write; the textbook form: about 6 reads and 2 writes);
- backward: the gradient of each gate is a reduction over one read of (grad, x); the input's
  gradient, including the paths through the pooling operations, is written once, from one
  read of grad (the max pools' tie terms are added at the tied entries afterwards). Nothing
  full-size is saved besides x itself (and, with the residual tail below, the output, which
  the next layer keeps for its own backward anyway).

For the standard small layers (the channel MLP Linear → ReLU → Linear → Sigmoid, ECA's 1-D
conv, the spatial gate's k×k conv → BatchNorm2d(1) or none → Sigmoid) the whole module —
full-size passes and small layers — is one operator call forward and one backward
(:func:`layer_gate`): the small layers' cost in PyTorch is per-call overhead (a 2→1 7×7 conv
backward through oneDNN takes over a millisecond on any map), which one call removes. Other
small layers (another activation, SE's optional norm) take :func:`gate_product`, which runs
the module's own layers between the fused full-size kernels. The modules check their layers
once and keep the result (:func:`layer_gate`): a forward then costs a few identity
checks in Python, not a walk over every layer's settings; replacing a layer, parameter,
buffer or pool setting, or changing a conv's hyperparameters, is noticed and checked anew.

A residual block's tail, relu(gate(x) + shortcut), can run in the same call
(:func:`residual_relu`, which the ResNet blocks call first): the output pass reads the shortcut
as well and writes the sum through the ReLU, so the block's own addition and ReLU (two more
full-size passes) disappear; the backward applies the ReLU's mask once and hands the result to
the shortcut as its gradient. A gate with hooks, or any module but SE, ECA and CBAM, keeps
the block's own addition and ReLU.

Memory: the full-size tensors the kernels write (the output, the input gradient) come from a
cache of freed blocks, so a tensor of a size seen before reuses mapped pages instead of
faulting fresh ones in (a fresh 13 MB tensor costs ~3,200 page faults, more than the gate's
arithmetic). Only memory is reused, never results. ``ATTNLAB_CACHE_MB`` caps the cached free
bytes (default 512; 0 disables), :func:`cached_bytes` reports them and :func:`empty_cache`
releases them.

BAM keeps the reference path: its cost is in its convolution branches, and a fused
``x + x·σ(M)`` kernel measured no faster here than PyTorch's own vectorised sigmoid and
products (a full-size exp per element either way).

The kernels are registered as PyTorch operators (``torch.ops.attnlab_fast.*``, with fake
implementations so tracing sees their shapes) and combined by autograd functions whose
backward recomputes instead of saving.

On CUDA the full-size kernels are Triton's (:mod:`attnlab.layers.triton_gates`, imported on
the first CUDA call; :func:`_ops_for` picks the kernels by device): the same operations with
the same signatures, combined by the same autograd functions (``_GateProduct``,
``_CoordProduct``) around the module's own small layers. The one-call module
(:func:`layer_gate`) and the fused block tail (:func:`residual_relu`) are CPU-only.

Selection (automatic, overridable):

- ``ATTNLAB_BACKEND=auto`` (default): the fast path when the input is a 4-D float32/float64
  tensor outside autocast, ``torch.compile`` tracing and TorchScript, on the CPU with the
  extension available or on CUDA with Triton importable; otherwise the reference path. Under
  ``torch.compile`` the reference path is traced on purpose: inductor fuses it itself.
- ``ATTNLAB_BACKEND=reference``: always the pure-PyTorch reference path (the modules' own
  equations, as documented in each module).
- ``ATTNLAB_BACKEND=fast``: like auto, but a failed build (or, on CUDA, a missing Triton)
  raises instead of falling back.
- In Python: :func:`set_backend` (``"auto"``, ``"fast"``, ``"reference"``), or the
  :func:`backend` context manager.

The extension is compiled on first use with ``torch.utils.cpp_extension`` (needs a C++
compiler and ninja; about a minute once) and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), keyed by a hash of its sources and the torch version. It is not
built at install time: pip's isolated build environment would have to install torch.

Max pooling ties: the gradient is split evenly among the entries equal to the maximum, as
PyTorch's ``amax`` does, so both paths agree even on ReLU-zeroed maps. In the one-call
backward the passes that read x count the tied entries and note the last one; the max pools'
terms are then added at those entries only (a scan of that row or column of x where more than
one entry ties), so the input gradient's full-size pass reads the gradient alone, not x.
(Float32 maps of 2^24 positions or channels and more, where a float cannot name each entry,
test ``x == max`` in every pass instead; ``ATTNLAB_DENSE_TIES=1`` forces that form.)

Example:
    >>> import torch
    >>> from attnlab.layers import CBAM, fused
    >>> cbam = CBAM(64)
    >>> x = torch.randn(2, 64, 9, 11)
    >>> with fused.backend("reference"):
    ...     ref = cbam(x)
    >>> torch.allclose(cbam(x), ref, rtol=1e-5, atol=1e-6)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, repeat
from operator import attrgetter, is_
from pathlib import Path

import torch
from torch import nn

from .maps import MapTap

BACKENDS = ("auto", "fast", "reference")
_CSRC = Path(__file__).with_name("csrc")
_SOURCES = ("gates.cpp", "coord.h", "entry.h", "gate_layers.h", "pool.h", "rows.h")
# -fno-trapping-math / -fno-math-errno let the compiler vectorise the branch-free selects and
# the float comparisons; results are unchanged for finite inputs.
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]

_state = {"backend": None, "ops": None, "error": None, "entry": None, "module": None}
_lock = threading.Lock()


def set_backend(name: str) -> None:
    """Chooses the gate implementation: ``"auto"``, ``"fast"`` or ``"reference"``."""
    if name not in BACKENDS:
        raise ValueError(f"attnlab backend must be one of {list(BACKENDS)}, got {name!r}")
    _state["backend"] = name


def get_backend() -> str:
    """The backend in force: set_backend's choice, else $ATTNLAB_BACKEND, else ``"auto"``."""
    if _state["backend"]:
        return _state["backend"]
    # os.environ's own dict (one lookup; .get goes through several Python calls, which the
    # gates pay on every forward), else os.environ.get
    raw = _ENV_DATA.get(_ENV_KEY) if _ENV_DATA is not None else os.environ.get(_ENV_NAME)
    name = _ENV_PARSED.get(raw)
    if name is None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        name = (text if text is not None else "auto").strip().lower()
        if name not in BACKENDS:
            raise ValueError(f"ATTNLAB_BACKEND must be one of {list(BACKENDS)}, got {name!r}")
        _ENV_PARSED[raw] = name
    return name


_ENV_NAME = "ATTNLAB_BACKEND"
try:
    _ENV_DATA, _ENV_KEY = os.environ._data, os.environ.encodekey(_ENV_NAME)  # CPython's os
except AttributeError:
    _ENV_DATA = _ENV_KEY = None
_ENV_PARSED: dict = {}


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous choice on exit."""
    previous = _state["backend"]
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


def build_error() -> str | None:
    """Why the extension is unavailable (after a failed build), else None."""
    return _state["error"]


def available() -> bool:
    """Whether the compiled kernels are loaded (builds them on first call)."""
    return _load() is not None


def cached_bytes() -> int:
    """Bytes of free full-size blocks the fast path keeps for reuse (0 without the kernels)."""
    ops = _load()
    return 0 if ops is None else int(ops.cache_bytes())


def empty_cache() -> None:
    """Returns the fast path's cached free blocks to the system (see "Memory" above)."""
    ops = _load()
    if ops is not None:
        ops.empty_cache()


def _load():
    if _state["ops"] is not None or _state["error"] is not None:
        return _state["ops"]
    with _lock:
        if _state["ops"] is None and _state["error"] is None:
            try:
                _state["ops"] = _build()
            except Exception as err:  # no compiler, no ninja, no headers…: use the reference
                _state["error"] = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return _state["ops"]


def _build():
    from torch.utils import cpp_extension

    try:  # the ninja wheel (a dependency) puts its binary beside the interpreter's scripts
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    # Built for this machine's CPU (-march=native): the cache key includes its feature flags,
    # so a home directory shared by different machines never loads a foreign build.
    digest = hashlib.sha256((torch.__version__ + _cpu_flags() + " ".join(_CFLAGS)).encode())
    for name in _SOURCES:
        digest.update((_CSRC / name).read_bytes())
    name = f"attnlab_fast_{digest.hexdigest()[:12]}"
    if not hasattr(torch.ops.attnlab_fast, "gate_apply"):
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
        if not any(build_dir.glob("*.so")):
            print("attnlab: compiling the fused CPU kernels (once; cached in "
                  f"{build_dir})", file=sys.stderr)  # fmt: skip
        module = cpp_extension.load(
            name=name,
            sources=[str(_CSRC / "gates.cpp")],
            extra_include_paths=[str(_CSRC)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=True,
            verbose=False,
        )
        _register_fakes()
        # residual_relu's inference call in C (entry.h), for the gates registered below
        env = type(_ENV_DATA) is dict and type(_ENV_KEY) is bytes  # (POSIX; else getenv)
        module.register_entry(
            _state, _ENTRY_GATES, nn.BatchNorm2d, vars(_torch_module),
            _ENV_DATA if env else None, _ENV_KEY if env else None,
        )  # fmt: skip
        _state["module"], _state["entry"] = module, module.residual_call
    return torch.ops.attnlab_fast


def _cpu_flags() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _register_fakes() -> None:
    def lib(op):
        return torch.library.register_fake(f"attnlab_fast::{op}")

    @lib("channel_pool")
    def _(x, with_max):
        b, c = x.shape[:2]
        small = x.new_empty(b, c)
        return (
            small,
            (small.new_empty(b, c) if with_max else x.new_empty(0)),
            x.new_empty((b, c) if with_max else (0, 0), dtype=torch.float32),
        )

    @lib("spatial_pool")
    def _(x, cw):
        b, p = x.shape[0], x.shape[2] * x.shape[3]
        return x.new_empty(b, p), x.new_empty(b, p), x.new_empty(b, p)

    @lib("gate_apply")
    def _(x, cw, sw):
        return torch.empty_like(x)

    @lib("gate_grad_spatial")
    def _(g, x, cw):
        return x.new_empty(x.shape[0], x.shape[2] * x.shape[3])

    @lib("gate_grad_channel")
    def _(g, x, cw, sw, sa, se, smx):
        return x.new_empty(x.shape[0], x.shape[1])

    @lib("gate_grad_input")
    def _(g, x, cw, sw, sa, se, smx, ca, ce, cmx):
        return torch.empty_like(x)

    @lib("gate_forward")
    def _(
        x, ch, kind, use_avg, use_max, sp, max_first, bn, rm, rv, momentum, eps, save, res=None,
        norm_mean=None, norm_var=None, norm_weight=None, norm_bias=None, norm_eps=1e-5,
    ):  # fmt: skip
        if not save:
            return [torch.empty_like(x)]
        b, c, h, w = x.shape
        p, none = h * w, x.new_empty(0)
        spatial = sp[0].numel() > 0
        small = [x.new_empty(b, c), x.new_empty(b, c)] if kind else [none] * 2
        if kind and not use_max:
            small[1] = x.new_empty(0, 0)
        maps = [x.new_empty(b, p)] * 2 if spatial else [none] * 2
        zhat = x.new_empty(b, p) if spatial and bn else x.new_empty(0, 0)
        return [
            torch.empty_like(x), x.new_empty(b, c), x.new_empty(b, p) if spatial else none,
            *small, *maps, zhat if spatial else none, x.new_empty(1) if spatial else none,
            x.new_empty((int(use_avg) + int(use_max)) * b, ch[0].shape[0]) if kind == 1 else none,
        ]  # fmt: skip

    @lib("gate_bn_train")
    def _(x, ch, kind, weight, bias, rm, rv, momentum, eps, res):
        return torch.empty_like(x)

    @lib("gate_train")
    def _(x, ch, kind, use_avg, use_max, sp, max_first, bn, rm, rv, momentum, eps, res=None):
        return torch.empty_like(x)

    @lib("gate_norm_train")
    def _(x, ch, kind, use_avg, use_max, sp, max_first, bn, rm, rv, momentum, eps, res, weight,
          bias, norm_mean, norm_var, norm_momentum, norm_eps):  # fmt: skip
        return torch.empty_like(x)

    @lib("gate_backward")
    def _(g, x, ch, kind, use_avg, use_max, sp, max_first, bn, saved, need_dx):
        def like(t, on):
            return torch.empty_like(t) if on and t.numel() else x.new_empty(0)

        return [like(x, need_dx), *(like(t, kind) for t in ch), *(like(t, True) for t in sp)]

    @lib("coord_pool")
    def _(x):
        b, c, h, w = x.shape
        last = _is_channels_last(x)
        return x.new_empty((b, h, c) if last else (b, c, h)), x.new_empty(
            (b, w, c) if last else (b, c, w)
        )

    @lib("coord_apply")
    def _(x, ah, aw):
        return torch.empty_like(x)

    @lib("coord_grad_gates")
    def _(g, x, ah, aw):
        return torch.empty_like(ah), torch.empty_like(aw)

    @lib("coord_grad_input")
    def _(g, ah, aw, dh, dw):
        return torch.empty_like(g)

    @lib("linear_exact")
    def _(x, w, b, relu):
        return x.new_empty((x.shape[0], w.shape[0]))


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


# The checks use_fast makes on every call, bound once: in a network each Python call runs cold
# (its code and objects out of cache), so fewer calls and lookups per check matter.
# torch.jit.is_tracing() is torch._C._is_tracing() outside TorchScript, which never runs this
# Python; torch.compiler.is_compiling() stays itself, as torch.compile folds it while tracing.
_FAST_DTYPES = (torch.float32, torch.float64)
_autocast = torch.is_autocast_enabled
_compiling = torch.compiler.is_compiling
_tracing = torch._C._is_tracing


def use_fast(x: torch.Tensor, *, channel_only: bool = False) -> bool:
    """Whether a gate module should take the fast path for input ``x`` (see module doc).

    ``channel_only``: the module is a channel gate alone (SE, ECA, CBAM's channel gate), whose
    inference (no autograd) runs its reference code: PyTorch's mean and broadcast multiply
    already make the minimum passes (one read; one read and one write), and skipping the fast
    path's bookkeeping saves its Python, which in a network costs more than it seems.
    """
    if channel_only and not torch.is_grad_enabled():
        return False
    name = get_backend()
    if name == "reference":
        return False
    if (
        x.dim() != 4
        or x.dtype not in _FAST_DTYPES
        or _compiling()  # (first: under torch.compile the C check below is not traced)
        or _tracing()
    ):
        return False
    if not x.is_cpu:
        if not x.is_cuda or _autocast("cuda"):
            return False
        ops = _triton_ops()
        if ops is None and name == "fast":
            raise RuntimeError(
                f"ATTNLAB_BACKEND=fast but the Triton kernels are unavailable: {_triton_error()}"
            )
        return ops is not None
    if _autocast("cpu"):
        return False
    ops = _load()
    if ops is None and name == "fast":
        raise RuntimeError(f"ATTNLAB_BACKEND=fast but the fused kernels failed: {build_error()}")
    return ops is not None


def _triton_ops():
    """The Triton kernels (:mod:`attnlab.layers.triton_gates`) or None where Triton is missing
    or fails to import; imported on the first CUDA call."""
    if "triton" not in _state:
        with _lock:
            if "triton" not in _state:
                try:
                    from . import triton_gates
                except Exception as err:  # no triton, or one that does not import
                    _state["triton_error"] = f"{type(err).__name__}: {err}".splitlines()[0]
                    triton_gates = None
                _state["triton"] = triton_gates
    return _state["triton"]


def _triton_error() -> str | None:
    return _state.get("triton_error")


def _ops_for(x: torch.Tensor):
    """The full-size kernels for x's device: the C++ operators (CPU) or the Triton ones."""
    return torch.ops.attnlab_fast if x.is_cpu else _triton_ops()


def _layout(x: torch.Tensor) -> torch.Tensor:
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _needs_grad(x: torch.Tensor, params: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


# ---------------------------------------------------------------------------------------------
# SE, ECA, CBAM: out = x · cw[b, c] · sw[b, h, w]

ChannelFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # avg, max → B×C
SpatialFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # mean, max (B×1×H×W) → same


def gate_product(
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    channel_fn: ChannelFn | None = None,
    channel_max: bool = False,
    spatial_fn: SpatialFn | None = None,
) -> torch.Tensor:
    """x · M_c(x) · M_s(x · M_c(x)) with fused kernels.

    Args:
        x: B×C×H×W input (NCHW or channels-last).
        params: the module's parameters (their gradients are computed through the gates).
        channel_fn: (avg B×C, max B×C or None) → channel weights B×C; None: no channel gate.
        channel_max: whether ``channel_fn`` needs the max pool.
        spatial_fn: (mean, max of the channel-gated x over channels, each B×1×H×W) → spatial
            weights B×1×H×W; None: no spatial gate.
    """
    x = _layout(x)
    params = [p for p in params if p.requires_grad]
    if _needs_grad(x, params):
        return _GateProduct.apply(x, (channel_fn, channel_max, spatial_fn), *params)
    if spatial_fn is None:
        # Inference with a channel gate only: PyTorch's mean and broadcast multiply already
        # make the minimum passes (one read; one read and one write), and are as fast.
        avg = x.mean((2, 3))
        weights = channel_fn(avg, x.amax((2, 3)) if channel_max else None)
        return x * weights.to(x.dtype)[:, :, None, None]
    ops = _ops_for(x)
    sw = None
    if channel_fn is not None:
        avg, mx, _ = ops.channel_pool(x, channel_max)
        cw = channel_fn(avg, mx if channel_max else None).to(x.dtype).contiguous()
    else:
        cw = x.new_ones(x.shape[:2])
    if spatial_fn is not None:
        b, _, h, w = x.shape
        mean, mx, _ = ops.spatial_pool(x, cw)
        sw = spatial_fn(mean.view(b, 1, h, w), mx.view(b, 1, h, w))
        sw = sw.to(x.dtype).reshape(b, h * w).contiguous()
    return ops.gate_apply(x, cw, sw)


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_()


def _grads(outputs, leaves, params, grad):
    """Gradients of ``outputs`` (a small graph) w.r.t. its pooled leaves and the parameters."""
    wanted = [t for t in leaves if t is not None] + list(params)
    # retain_graph: a retained outer graph may run this backward again (gradcheck does).
    got = torch.autograd.grad(outputs, wanted, grad, allow_unused=True, retain_graph=True)
    it = iter(got)
    leaf_grads = [None if t is None else next(it) for t in leaves]
    return leaf_grads, list(it)


class _GateProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fns, *params):
        channel_fn, channel_max, spatial_fn = fns
        ops = _ops_for(x)
        b, c, h, w = x.shape
        ctx.fns, ctx.shape = fns, (b, c, h, w)
        cw = x.new_ones(b, c)
        sw = cmx = ccnt = smx = scnt = None
        ctx.channel = ctx.spatial = None
        if channel_fn is not None:
            avg, mx, cnt = ops.channel_pool(x, channel_max)
            leaves = (_leaf(avg), _leaf(mx) if channel_max else None)
            with torch.enable_grad():
                weights = channel_fn(*leaves)
            ctx.channel = (weights, leaves)
            cw = weights.detach().to(x.dtype).contiguous()
            if channel_max:
                cmx, ccnt = mx, cnt
        if spatial_fn is not None:
            mean, mx, scnt = ops.spatial_pool(x, cw)
            leaves = (_leaf(mean.view(b, 1, h, w)), _leaf(mx.view(b, 1, h, w)))
            with torch.enable_grad():
                weights = spatial_fn(*leaves)
            ctx.spatial = (weights, leaves)
            sw = weights.detach().to(x.dtype).reshape(b, h * w).contiguous()
            smx = mx
        ctx.save_for_backward(x, cw, sw, cmx, ccnt, smx, scnt)
        ctx.params = params
        return ops.gate_apply(x, cw, sw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, cw, sw, cmx, ccnt, smx, scnt = ctx.saved_tensors
        ops = _ops_for(x)
        b, c, h, w = ctx.shape
        grad = grad.contiguous(memory_format=_format(x))
        params, param_grads = ctx.params, [None] * len(ctx.params)
        sa = se = None
        ca, ce = cw.new_zeros(b, c), None
        if cmx is None:  # no channel max pool: its term adds ce = 0 wherever x == 0
            cmx = cw.new_zeros(b, c)
        if ctx.spatial is not None:
            weights, leaves = ctx.spatial
            dsw = ops.gate_grad_spatial(grad, x, cw).view(b, 1, h, w).to(weights.dtype)
            (dmean, dmax), more = _grads(weights, leaves, params, dsw)
            param_grads = _add(param_grads, more)
            sa = (dmean.reshape(b, h * w) / c).to(x.dtype).contiguous()
            se = (dmax.reshape(b, h * w) / scnt).to(x.dtype).contiguous()
        if ctx.channel is not None:
            weights, leaves = ctx.channel
            dcw = ops.gate_grad_channel(grad, x, cw, sw, sa, se, smx).to(weights.dtype)
            (davg, dmx), more = _grads(weights, leaves, params, dcw)
            param_grads = _add(param_grads, more)
            if davg is not None:  # None when the gate uses the max pool only
                ca = (davg / (h * w)).to(x.dtype).contiguous()
            if dmx is not None:
                ce = (dmx / ccnt).to(x.dtype).contiguous()
        if ce is None:
            ce = cw.new_zeros(b, c)
        # A frozen input (e.g. attention inserted after frozen layers) skips the full-size pass.
        needs_dx = ctx.needs_input_grad[0]
        dx = ops.gate_grad_input(grad, x, cw, sw, sa, se, smx, ca, ce, cmx) if needs_dx else None
        return (dx, None, *param_grads)


def _add(a: list, b: list) -> list:
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b, strict=True)]


# ---------------------------------------------------------------------------------------------
# One operator call per module: SE, ECA and CBAM whose small layers are the standard ones.


class _Plan:
    """What :func:`layer_gate` derives from a module's layers, and what that depends on.

    ``dicts``/``values`` are the ``_modules``, ``_parameters`` and ``_buffers`` dicts of the
    owner's module tree and their entries when the plan was made; ``attr_dicts``,
    ``attr_keys`` and ``attr_values`` the gates' pool settings and the conv layers'
    hyperparameters, where they were read from and what they were. A replaced
    layer, parameter, buffer or setting (assigned, or written into ``_modules`` directly) is
    noticed by identity checks, run at C level (``map``), which matters more than it seems: in a
    network each gate's Python runs with caches just flushed by a convolution, where every
    Python step costs ten times its warm time. A plan is never copied or pickled with its owner
    (it refers to the owner's own tensors): copies make their own.
    """

    __slots__ = (
        "dicts", "lens", "values", "attr_dicts", "attr_keys", "attr_values", "dtype", "ok",
        "kind", "params", "use_avg", "use_max", "max_first", "norm", "running", "taps",
        "stat_check", "spatial", "tracked", "own_attrs", "tap_dicts", "fast",
    )  # fmt: skip

    def __reduce__(self):
        return (_no_plan, ())

    def valid(self, x: torch.Tensor, owner: nn.Module) -> bool:
        d = owner.__dict__  # the owner's own settings: its __dict__ holds the plan, so the
        # plan must not hold it (a cycle would keep a deleted module's tensors until gc runs)
        return (
            x.dtype is self.dtype
            and list(map(len, self.dicts)) == self.lens
            and all(map(is_, chain.from_iterable(map(dict.values, self.dicts)), self.values))
            and all(map(is_, map(dict.get, self.attr_dicts, self.attr_keys), self.attr_values))
            and all(d.get(key) is value for key, value in self.own_attrs)
        )

    def watch(self, obj: object, keys: Sequence[str]) -> None:
        d = obj.__dict__
        for key in keys:
            if key in d:
                self.attr_dicts.append(d)
                self.attr_keys.append(key)
                self.attr_values.append(d[key])


def _no_plan() -> None:
    return None


_dtype_of = attrgetter("dtype")
_requires_grad = attrgetter("requires_grad")


def _observed(tap: nn.Module) -> bool:
    return getattr(tap, "observed", False)


_WATCHED = ("pool_types", "pool_order")
_GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
             "groups", "padding_mode", "transposed", "output_padding")  # fmt: skip


def _make_plan(x, owner, *, mlp=None, eca=None, pools=("avg",), spatial=None, taps=()) -> _Plan:
    plan = _Plan()
    plan.dtype, plan.ok, plan.taps = x.dtype, False, tuple(taps)
    plan.dicts, plan.attr_dicts, plan.attr_keys, plan.attr_values = [], [], [], []
    plan.stat_check = plan.fast = None
    plan.own_attrs = ()
    for m in owner.modules():
        # The dicts that can change what the operator computes: those holding submodules, and
        # those of the layers with parameters or buffers. (Exact layer types are required
        # below, and a parameter-free layer of those types — ReLU, Sigmoid, Identity, a map
        # tap — computes the same with anything added to it.) Fewer dicts, cheaper checks.
        plan.dicts += [d for d in (m._modules, m._parameters, m._buffers) if d]
        if m is owner:
            plan.own_attrs = tuple((k, m.__dict__[k]) for k in _WATCHED if k in m.__dict__)
        else:
            plan.watch(m, _WATCHED)  # the gates' own settings that layer_gate reads
    plan.lens = list(map(len, plan.dicts))
    plan.values = tuple(chain.from_iterable(map(dict.values, plan.dicts)))
    # The taps' hook dicts, read per call to see which taps are observed (MapTap.observed),
    # and watched so that a tap given new hook dicts is noticed; other taps: asked each call.
    plan.tap_dicts = None
    if all(type(t) is MapTap for t in plan.taps):
        plan.tap_dicts = [d for t in plan.taps for d in (t._forward_hooks, t._forward_pre_hooks)]
        for t in plan.taps:
            plan.watch(t, ("_forward_hooks", "_forward_pre_hooks"))
    none = x.new_empty(0)
    kind, channel = 0, [none] * 4
    if mlp is not None:
        fc1, norm, act, fc2, gate = mlp
        if not (
            type(fc1) is nn.Linear
            and type(fc2) is nn.Linear
            and (norm is None or type(norm) is nn.Identity)
            and type(act) is nn.ReLU
            and type(gate) is nn.Sigmoid
        ):
            return plan
        kind, channel = 1, [fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    elif eca is not None:
        conv, gate = eca
        plan.watch(conv, _GEOMETRY)
        k = conv.kernel_size[0]
        if not (
            type(conv) is nn.Conv1d
            and conv.bias is None
            and conv.in_channels == conv.out_channels == 1
            and k % 2 == 1
            and conv.padding == ((k - 1) // 2,)
            and conv.stride == (1,)
            and conv.dilation == (1,)
            and conv.padding_mode == "zeros"
            and type(gate) is nn.Sigmoid
        ):
            return plan
        kind, channel, pools = 2, [conv.weight, None, None, None], ("avg",)
    params_sp, norm = [none] * 4, None
    if spatial is not None:
        conv, norm, k = spatial.conv, spatial.norm, spatial.conv.kernel_size
        plan.watch(conv, _GEOMETRY)
        if not (
            type(conv) is nn.Conv2d
            and conv.in_channels == 2
            and conv.out_channels == 1
            and k[0] == k[1]
            and k[0] % 2 == 1
            and conv.padding == (k[0] // 2,) * 2
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and type(spatial.gate) is nn.Sigmoid
        ):
            return plan
        if type(norm) is nn.BatchNorm2d and norm.num_features == 1:
            bn_params = [norm.weight, norm.bias]
            # weakly: a SpatialGate owning the plan would otherwise keep itself alive in a cycle
            plan.stat_check = weakref.WeakMethod(spatial.check_statistics)
        elif type(norm) is nn.Identity:
            bn_params, norm = [None, None], None
        else:
            return plan
        params_sp = [conv.weight, conv.bias, *bn_params]
    params = [none if p is None else p for p in channel + params_sp]
    if any(p.dtype != x.dtype or p.device != x.device for p in params):
        return plan
    running, plan.tracked = (none, none), None
    if norm is not None and norm.running_mean is not None:
        running = (norm.running_mean, norm.running_var)
        plan.tracked = norm.num_batches_tracked
        if any(t.dtype != x.dtype for t in running):
            return plan
    plan.kind, plan.params, plan.norm, plan.running = kind, params, norm, running
    plan.spatial = spatial is not None
    plan.use_avg, plan.use_max = "avg" in pools, "max" in pools
    plan.max_first = spatial is not None and tuple(spatial.pool_order) == ("max", "mean")
    plan.ok = True
    if plan.tap_dicts is not None and x.dtype in _FAST_DTYPES:
        # what the C entry (entry.h's residual_call) reads of the plan, in its order
        plan.fast = (
            x.dtype is torch.float64, tuple(plan.dicts), tuple(plan.lens), plan.values,
            tuple(plan.attr_dicts), tuple(plan.attr_keys), tuple(plan.attr_values),
            plan.own_attrs, tuple(params), (kind, plan.use_avg, plan.use_max, plan.max_first),
            norm, tuple(running), plan.stat_check is not None, tuple(plan.tap_dicts),
        )  # fmt: skip
    return plan


def layer_gate(
    owner: nn.Module,
    x: torch.Tensor,
    layers: Callable[[], dict],
    residual: torch.Tensor | None = None,
    norm: tuple[list[torch.Tensor | None], float] | None = None,
) -> torch.Tensor | None:
    """x · M_c(x) · M_s(x · M_c(x)) for the gate ``owner``: one operator call each way.

    The module's small layers run inside the operator too, so this applies only when they are
    the standard ones: the channel MLP Linear → ReLU → Linear → Sigmoid (no norm), ECA's
    bias-free odd 1-D conv → Sigmoid, and the spatial gate's 2→1 odd square conv (zero
    padding, stride 1) → BatchNorm2d(1) or nothing → Sigmoid, with parameters of x's dtype.
    Returns None otherwise, and the caller takes :func:`gate_product`, which runs the module's
    own layers; so it does while autograd records and a map tap is observed (its hooks may
    want maps that carry the graph). Observed without autograd, the taps see the maps this
    call used.

    ``layers()`` gives the owner's layers as keyword arguments: ``mlp`` (fc1, norm or None,
    act, fc2, gate) or ``eca`` (conv, gate); ``pools`` ("avg" and/or "max", default "avg");
    ``spatial`` (a SpatialGate-like module: ``conv``, ``norm``, ``gate``, ``pool_order``);
    ``taps`` (the map taps). It is called, and the layers checked, only when no plan is kept on
    ``owner`` for them: on the first call, after any of the owner's submodules, parameters or
    buffers was replaced, after a pool setting or a conv's hyperparameters changed, or for
    another dtype. Per call there remain identity checks and what may change between calls
    (training mode, BatchNorm's momentum, which taps are observed, which parameters need
    gradients, their dtype).

    Args:
        owner: the gate module (the plan is kept in its ``__dict__``).
        x: B×C×H×W input (NCHW or channels-last), on the fast path (see :func:`use_fast`).
        layers: () → the keyword arguments above.
        residual: a tensor of x's shape, dtype and device: the result is then
            relu(gate(x) + residual), in the same pass (see :func:`residual_relu`).
        norm: an eval-mode BatchNorm2d before the gate, as :func:`_norm_args` gives it (only
            without autograd): x is then the norm's input, and each of the gate's passes
            normalises what it reads; the norm's output is never written (see
            :func:`residual_relu`).
    """
    if not x.is_cpu:  # (CUDA: the module's own layers between the Triton kernels)
        return None
    plan = owner.__dict__.get("_attnlab_plan")
    if plan is None or not plan.valid(x, owner):
        plan = _make_plan(x, owner, **layers())
        owner.__dict__["_attnlab_plan"] = plan
    return _run_plan(plan, x, residual, norm)


def _run_plan(
    plan: _Plan,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    in_norm: tuple[list[torch.Tensor | None], float] | None = None,
) -> torch.Tensor | None:
    train_norm = type(in_norm) is nn.BatchNorm2d  # (from residual_relu: _training_norm)
    if not plan.ok or (in_norm is not None and torch.is_grad_enabled() != train_norm):
        return None
    if train_norm and residual is None:
        return None  # the norm's training calls take the block's tail
    params, norm = plan.params, plan.norm
    # .to(dtype) keeps the Parameter objects. (C-level loops: see _Plan.)
    if not all(map(is_, map(_dtype_of, params), repeat(x.dtype))):
        return None
    if plan.stat_check is not None and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        check = plan.stat_check()
        if check is not None:
            check(x)  # a BatchNorm that would see one value: a clear error
    tap_dicts = plan.tap_dicts
    observed = [*filter(_observed, plan.taps)] if tap_dicts is None or any(tap_dicts) else ()
    grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(map(_requires_grad, params))
        or (residual is not None and residual.requires_grad)
    )
    if grad and observed:  # the taps' hooks may want maps that carry the graph: run the layers
        return None
    if train_norm and (plan.kind == 0 or plan.spatial or plan.use_max):
        if not grad or not _sparse_ties(x):
            return None  # (gate_norm_train: the max pools' ties found by index)
    elif train_norm:
        return _run_training_norm(plan, x, residual, in_norm) if grad else None
    if not grad and not plan.spatial and residual is None:
        # Inference with a channel gate only: gate_product's PyTorch mean and multiply make
        # the same two passes and measured as fast or faster (SE, ResNet-50 stage shapes).
        return None
    bn, running = 0, plan.running
    tracking = norm is not None and running[0].numel() > 0
    if norm is not None:
        bn = 1 if norm.training or not tracking else 2
    # From here the operator runs (no fallback), so BatchNorm's bookkeeping happens once.
    momentum, eps = 0.0, 1e-5 if norm is None else norm.eps
    if tracking and norm.training:
        plan.tracked.add_(1)  # num_batches_tracked, as nn.BatchNorm2d's forward does it
        momentum = norm.momentum
        if momentum is None:  # a cumulative average
            momentum = 1.0 / float(plan.tracked)
    cfg = (plan.kind, plan.use_avg, plan.use_max, plan.max_first, bn, *running, momentum, eps)
    x = _layout(x)
    if residual is not None:  # in x's layout: the kernel walks both in one loop
        residual = residual.contiguous(memory_format=_format(x))
    if train_norm:  # the block's norm in the gate's passes (attnlab_fast::gate_norm_train)
        return torch.ops.attnlab_fast.gate_norm_train(
            x, params[:4], cfg[0], cfg[1], cfg[2], params[4:], cfg[3], cfg[4], *cfg[5:], residual,
            *_training_norm_args(in_norm, x),
        )  # fmt: skip
    if grad:  # autograd's node is C++ too (attnlab_fast::gate_train)
        return torch.ops.attnlab_fast.gate_train(
            x, params[:4], cfg[0], cfg[1], cfg[2], params[4:], cfg[3], cfg[4], *cfg[5:], residual
        )
    outs = torch.ops.attnlab_fast.gate_forward(
        x, params[:4], cfg[0], cfg[1], cfg[2], params[4:], cfg[3], cfg[4], *cfg[5:],
        bool(observed), residual, *((*in_norm[0], in_norm[1]) if in_norm else ()),
    )  # fmt: skip
    b, c, h, w = x.shape
    for tap in observed:  # the maps this very call used, so observing changes no output
        tap(outs[1].view(b, c, 1, 1) if tap.kind == "channel" else outs[2].view(b, 1, h, w))
    return outs[0]


def _sparse_ties(x: torch.Tensor) -> bool:
    """Whether gate_backward finds the max pools' ties by index (what gate_norm_train needs):
    not forced dense (ATTNLAB_DENSE_TIES=1), and indices exact in x's dtype."""
    if os.environ.get("ATTNLAB_DENSE_TIES") == "1":
        return False
    return x.dtype == torch.float64 or max(x.shape[1], x.shape[2] * x.shape[3]) < 1 << 24


def _training_norm_args(norm: nn.BatchNorm2d, x: torch.Tensor) -> tuple:
    """A training-mode BatchNorm2d as the training calls take it: weight, bias, running mean and
    variance (empty: none to update), momentum and eps; counts the step as its forward does."""
    momentum = 0.0 if norm.momentum is None else norm.momentum
    d, p = norm._buffers, norm._parameters
    mean, var, tracked = d.get("running_mean"), d.get("running_var"), d.get("num_batches_tracked")
    if norm.track_running_stats and tracked is not None:  # as nn.BatchNorm2d's forward
        tracked.add_(1)
        if norm.momentum is None:  # a cumulative average
            momentum = 1.0 / float(tracked)
    if not norm.track_running_stats or mean is None or var is None:
        mean = var = x.new_empty(0)  # batch statistics, nothing to update
    return p.get("weight"), p.get("bias"), mean, var, momentum, norm.eps


def _run_training_norm(
    plan: _Plan, x: torch.Tensor, residual: torch.Tensor, norm: nn.BatchNorm2d
) -> torch.Tensor:
    """relu(gate(norm(x)) + residual) with ``norm`` in training mode, in one operator call each
    way (attnlab_fast::gate_bn_train: the norm's output is never written; see residual_relu)."""
    weight, bias, mean, var, momentum, eps = _training_norm_args(norm, x)
    return torch.ops.attnlab_fast.gate_bn_train(
        x, plan.params[:4], plan.kind, weight, bias, mean, var, momentum, eps,
        residual.contiguous(memory_format=_format(x)),
    )  # fmt: skip


def _hooked(module: nn.Module, *, global_hooks: bool | None = None) -> bool:
    """Whether calling ``module`` runs hooks (its own, or global module hooks; ``global_hooks``:
    :func:`_global_hooks`, when the caller has it already)."""
    if (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    ):
        return True
    return _global_hooks() if global_hooks is None else global_hooks


def _global_hooks() -> bool:
    """Whether global module hooks are registered (nn.modules.module's own check)."""
    has_global = getattr(_torch_module, "_has_any_global_hook", None)
    return True if has_global is None else bool(has_global())  # unknown torch: assume hooks


_torch_module = sys.modules[nn.Module.__module__]


# The gate classes whose inference call the C entry runs (entry.h's residual_call, in front of
# residual_relu's Python), each with whether it must be in channel-spatial order (CBAM). That
# function makes the Python path's checks itself, _fused_residual's included (check_input's
# channel count and non-empty sizes, the order), and then runs layer_gate's plan: so a class
# registers (with entry_gate) only if its _fused_residual is those checks and layer_gate.
_ENTRY_GATES: list[tuple[type, bool]] = []


def entry_gate(*, ordered: bool = False) -> Callable[[type], type]:
    """Class decorator: registers a gate class with the C entry (see ``_ENTRY_GATES``)."""

    def register(cls: type) -> type:
        _ENTRY_GATES.append((cls, ordered))
        return cls

    return register


def residual_relu(
    attn: nn.Module,
    x: torch.Tensor,
    shortcut: torch.Tensor,
    norm: nn.Module | None = None,
) -> torch.Tensor | None:
    """relu(attn(x) + shortcut) — a residual block's tail — in the gate's own operator call.

    The gate's last pass reads x and writes its output anyway; reading the shortcut there too
    and writing relu(out + shortcut) saves the block's addition and ReLU, two more full-size
    passes forward; the backward applies the ReLU's mask in its first pass (which reads the
    gradient anyway) and saves the output, the next layer's input, kept alive by it anyway.
    The blocks of :mod:`attnlab.models.resnet` call this first.

    With ``norm`` (the block's last BatchNorm), x is the norm's input and the result is
    relu(attn(norm(x)) + shortcut). At inference (grad mode off, the norm an ``nn.BatchNorm2d``
    in eval mode with running statistics and no hooks) the norm runs in the gate's call too:
    each of the gate's passes reads x and normalises it on the fly, so the norm costs neither a
    pass nor the write of its output (the plain block's norm reads x and writes that). In
    training (autograd recording, the norm an ``nn.BatchNorm2d`` in training mode without hooks,
    x NCHW or channels-last) the gate's call runs the norm too, forward and backward, and never
    writes its output: SE's and ECA's (``attnlab_fast::gate_bn_train``) in two passes each way, its
    statistics' pass also pooling for the gate and the backward's two passes also giving the
    norm's gradient (instead of the gate's two and the norm's two); CBAM's
    (``attnlab_fast::gate_norm_train``) in the gate's own passes, which normalise what they
    read, its statistics' pass also giving the channel pools (the max pool from the row's
    largest or, where γ < 0, smallest value) and the backward's channel pass also the norm's
    sums (where the max pools' ties are found by index: not with ``ATTNLAB_DENSE_TIES=1``).
    Otherwise the norm is called as usual.

    Applies to :class:`~attnlab.layers.SE`, :class:`~attnlab.layers.ECA` and
    :class:`~attnlab.layers.CBAM` (channel→spatial order) with the standard small layers (see
    :func:`layer_gate`), on the fast path (see :func:`use_fast`), in training and inference.
    Returns None otherwise — another module (a subclass too), hooks on ``attn`` or global
    module hooks (a hook must see ``attn``'s own output), a shortcut that differs from x in
    shape, dtype or device — having run nothing (not the norm either), and the caller computes
    ``relu(attn(norm(x)) + shortcut)`` itself.

    At inference the common case — a registered gate (SE, ECA, CBAM) with its plan kept, the
    norm in eval mode, nothing hooked or observed — is checked and run by one C function
    (``csrc/entry.h``), which declines, having run nothing, wherever anything differs; this
    Python then decides. (In a network this function's Python runs cold, at about ten times its
    warm cost: the C checks save most of it.)
    """
    entry = _state["entry"]
    if entry is not None and not _compiling():
        out = entry(attn, x, shortcut, norm)
        if out is not None:
            return out
    fn = type(attn).__dict__.get("_fused_residual")
    if (
        fn is None
        or not isinstance(x, torch.Tensor)
        or not isinstance(shortcut, torch.Tensor)
        or shortcut.shape != x.shape
        or shortcut.dtype != x.dtype
        or not shortcut.is_cpu  # x's device, where use_fast says yes
        or _hooked(attn, global_hooks=(global_hooks := _global_hooks()))
        or not use_fast(x)
    ):
        return None
    if norm is None:
        return fn(attn, x, shortcut)
    if not torch.is_grad_enabled():
        args = _norm_args(norm, x, global_hooks)
        if args is not None:
            return fn(attn, x, shortcut, args)  # None: nothing ran
    elif _training_norm(norm, x, global_hooks):
        out = fn(attn, x, shortcut, norm)
        if out is not None:
            return out  # None: nothing ran
    y = norm(x)
    out = fn(attn, y, shortcut) if isinstance(y, torch.Tensor) and y.shape == x.shape else None
    return out if out is not None else torch.relu(attn(y) + shortcut)  # the norm has run


def _training_norm(norm: nn.Module, x: torch.Tensor, global_hooks: bool) -> bool:
    """Whether ``norm`` is a BatchNorm2d in training mode that the gate's training call can run
    (batch statistics; x NCHW or channels-last with more than one value per channel; tensors
    of x's dtype)."""
    if (
        type(norm) is not nn.BatchNorm2d
        or not norm.training
        or _hooked(norm, global_hooks=global_hooks)
    ):
        return False
    b, c, h, w = x.shape
    if b * h * w == 1 or norm.num_features != c:
        return False  # (one value: the norm's own call gives PyTorch's error)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    d, p = norm._buffers, norm._parameters
    ts = [p.get("weight"), p.get("bias"), d.get("running_mean"), d.get("running_var")]
    return all(t is None or (t.dtype == x.dtype and t.dim() == 1 and t.is_contiguous()) for t in ts)


def _norm_args(
    norm: nn.Module, x: torch.Tensor, global_hooks: bool
) -> tuple[list[torch.Tensor | None], float] | None:
    """An eval-mode BatchNorm2d's tensors as gate_forward's ``norm`` takes them, or None."""
    if (
        type(norm) is not nn.BatchNorm2d
        or norm.training
        or _hooked(norm, global_hooks=global_hooks)
    ):
        return None
    d, p = norm._buffers, norm._parameters  # (not norm.weight: nn.Module's __getattr__)
    mean, var = d.get("running_mean"), d.get("running_var")
    if mean is None or var is None:  # no running statistics: batch statistics, as in training
        return None
    ts = [mean, var, p.get("weight"), p.get("bias")]  # weight, bias: None without affine
    if mean.shape[0] != x.shape[1] or any(t is not None and t.dtype != x.dtype for t in ts):
        return None  # the norm's own call gives the error, or runs another dtype
    return ts, norm.eps


# ---------------------------------------------------------------------------------------------
# Coordinate Attention: out = x · a_h[b, c, h] · a_w[b, c, w]

CoordFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def coord_product(x: torch.Tensor, params: Sequence[torch.Tensor], gates_fn: CoordFn):
    """x · a_h · a_w with fused kernels.

    Args:
        x: B×C×H×W input (NCHW or channels-last).
        params: the module's parameters.
        gates_fn: (z_h B×C×H = mean over W, z_w B×C×W = mean over H) → (a_h B×C×H, a_w B×C×W).
    """
    x = _layout(x)
    params = [p for p in params if p.requires_grad]
    if _needs_grad(x, params):
        return _CoordProduct.apply(x, gates_fn, *params)
    last = _is_channels_last(x)
    ops = _ops_for(x)
    ph, pw = ops.coord_pool(x)
    ah, aw = gates_fn(*(_to_bch(t, last) for t in (ph, pw)))
    return ops.coord_apply(x, _from_bch(ah, last, x), _from_bch(aw, last, x))


def _to_bch(t: torch.Tensor, last: bool) -> torch.Tensor:
    return t.transpose(1, 2) if last else t  # kernel layout → B×C×L


def _from_bch(t: torch.Tensor, last: bool, x: torch.Tensor) -> torch.Tensor:
    t = t.to(x.dtype)
    return (t.transpose(1, 2) if last else t).contiguous()  # B×C×L → kernel layout


class _CoordProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gates_fn, *params):
        ops = _ops_for(x)
        last = _is_channels_last(x)
        ph, pw = ops.coord_pool(x)
        leaves = (_leaf(_to_bch(ph, last)), _leaf(_to_bch(pw, last)))
        with torch.enable_grad():
            gates = gates_fn(*leaves)
        ah, aw = (_from_bch(t.detach(), last, x) for t in gates)
        ctx.graph, ctx.params, ctx.last = (gates, leaves), params, last
        ctx.save_for_backward(x, ah, aw)
        return ops.coord_apply(x, ah, aw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, ah, aw = ctx.saved_tensors
        ops = _ops_for(x)
        h, w = x.shape[2:]
        grad = grad.contiguous(memory_format=_format(x))
        dah, daw = ops.coord_grad_gates(grad, x, ah, aw)
        gates, leaves = ctx.graph
        outs = [_to_bch(t, ctx.last).to(g.dtype) for t, g in zip((dah, daw), gates, strict=True)]
        wanted = list(leaves) + list(ctx.params)
        got = torch.autograd.grad(gates, wanted, outs, allow_unused=True, retain_graph=True)
        dh = _from_bch(got[0] / w, ctx.last, x)
        dw = _from_bch(got[1] / h, ctx.last, x)
        dx = ops.coord_grad_input(grad, ah, aw, dh, dw) if ctx.needs_input_grad[0] else None
        return (dx, None, *got[2:])
