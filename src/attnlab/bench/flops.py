"""Counting multiply-accumulates (MACs) and FLOPs of one forward pass, with a per-op breakdown.

Two numbers, two conventions:

- **MACs** — the attention papers' "FLOPs": multiply-accumulates of convolutions, linear layers,
  matmul/bmm and attention kernels, i.e. what ``torch.utils.flop_counter.FlopCounterMode``
  counts, divided by 2. ResNet-50 at 224×224: 4.09 G (torchvision's figure).
- **FLOPs** — 2 × MACs plus what FlopCounterMode leaves out, counted through its
  ``custom_mapping`` (one pass, one dispatch mode), with these per-op costs:

  ======================================================  =====================================
  op                                                       FLOPs
  ======================================================  =====================================
  elementwise: add, sub, mul, div, sigmoid, relu,          1 per output element
  hardswish, hardsigmoid, silu, gelu, tanh, exp, … (and
  their in-place forms)
  softmax, log_softmax                                     3 per element (exp, sum, divide)
  reductions: mean, sum, amax, amin, max/min over dims     1 per input element
  adaptive avg/max pooling                                 1 per input element
  windowed avg/max pooling                                 1 per output element × window size
                                                           (= 1 per input element when windows
                                                           tile the input)
  batch norm, inference (running statistics)               2 per element (folded scale, shift)
  batch/layer/group norm with batch statistics             4 per element (2 statistics, 2 apply)
  ======================================================  =====================================

  Biases of conv/linear layers are not counted (the MAC convention). Backward ops other than
  convolution/matmul (``threshold_backward``, ``sigmoid_backward`` …) have no formula; they are
  listed under ``"uncounted"`` when a counted function runs a backward pass.

attnlab's blocked position attention (PAM) runs as one opaque custom op; its cost is given by
formula: forward B·N²·(d + C) MACs plus softmax (3·B·N²); its backward (which recomputes the
scores) B·N²·(3d + 2C) MACs. attnlab's gate modules are counted on their reference (pure
PyTorch) path: the kernels of the fast path are opaque to any dispatch-level counter, and
the count is a property of the module's equations, not of its kernels. Any other opaque op
(non-``aten`` namespace) that has no formula is listed under ``"uncounted"``, so a count that
misses work says so.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from attnlab.bench.flops import count_flops
    >>> gate = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.Sigmoid())
    >>> counts = count_flops(gate, (1, 8, 5, 5))
    >>> counts["macs"], counts["flops"]  # 4·8 MACs per pixel; + 1 sigmoid per output element
    (800, 1700)
    >>> counts["by_op"]["aten.sigmoid"]
    {'calls': 1, 'macs': 0, 'flops': 100}
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .. import kernels

# Per-element costs (see the table in the module docstring).
ELEMENTWISE_OPS = (
    "add", "sub", "rsub", "mul", "div", "neg", "reciprocal", "sigmoid", "relu", "relu6",
    "leaky_relu", "elu", "hardswish", "hardsigmoid", "hardtanh", "silu", "gelu", "tanh", "exp",
    "log", "sqrt", "rsqrt", "pow", "abs", "clamp", "clamp_min", "clamp_max", "minimum",
    "maximum", "where", "addcmul", "addcdiv", "lerp",
)  # fmt: skip
SOFTMAX_OPS = ("_softmax", "_log_softmax")
SOFTMAX_FLOPS_PER_ELEMENT = 3
REDUCTION_OPS = ("mean", "sum", "amax", "amin", "max", "min", "prod", "logsumexp")
ADAPTIVE_POOL_OPS = (
    "_adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool3d",
    "adaptive_max_pool1d",
)  # fmt: skip
WINDOW_POOL_OPS = (
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool2d_with_indices", "max_pool3d_with_indices",
)  # fmt: skip
NORM_INFERENCE_OPS = ("_native_batch_norm_legit_no_training",)
NORM_BATCH_STAT_OPS = ("_native_batch_norm_legit", "native_batch_norm")
NORM_OPS = ("native_layer_norm", "native_group_norm")
NORM_INFERENCE_FLOPS, NORM_BATCH_FLOPS = 2, 4

Formula = Callable[..., tuple[int, int]]  # shapes and arguments → (MACs, extra FLOPs)


def count_flops(
    model_or_fn: nn.Module | Callable[..., Any],
    input_shape_or_inputs: Sequence[int] | torch.Tensor | Sequence[torch.Tensor],
    *,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """MACs and FLOPs of one call, with a per-op breakdown.

    A module is counted in eval mode under ``torch.no_grad()`` (its mode is restored); a plain
    function is called as it is (it may run a backward pass, whose convolution and matmul
    gradients are then counted too).

    Args:
        model_or_fn: a module, or any callable taking the inputs.
        input_shape_or_inputs: a shape (a zero tensor of it is the input), a tensor, or a
            tuple of tensors passed as positional arguments.
        device: where a zero input is created; default: the module's parameters' device, or CPU.

    Returns:
        ``{"macs": int, "flops": int, "by_op": {op: {"calls", "macs", "flops"}},
        "uncounted": {op: calls}}``, ops named like ``"aten.convolution"``.
    """
    inputs = _inputs(model_or_fn, input_shape_or_inputs, device)
    macs_of_custom: Counter = Counter()
    calls: Counter = Counter()
    uncounted: Counter = Counter()
    counter = _Counter(calls, uncounted, display=False, custom_mapping=_mapping(macs_of_custom))
    with _reference_gates(), _module_call(model_or_fn) as call, counter:
        call(*inputs)
    by_op: dict[str, dict[str, int]] = {}
    for packet, flops in counter.get_flop_counts().get("Global", {}).items():
        if packet in macs_of_custom:
            macs = macs_of_custom[packet]
        elif packet in flop_registry:  # PyTorch's own formulas: 2 FLOPs per MAC
            macs = flops // 2
        else:
            macs = 0
        by_op[str(packet)] = {"calls": calls[packet], "macs": macs, "flops": flops}
    return {
        "macs": sum(row["macs"] for row in by_op.values()),
        "flops": sum(row["flops"] for row in by_op.values()),
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["flops"])),
        "uncounted": {str(p): n for p, n in sorted(uncounted.items(), key=str)},
    }


class _Counter(FlopCounterMode):
    """FlopCounterMode that also tallies calls per op and the ops it has no formula for."""

    def __init__(self, calls: Counter, uncounted: Counter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._calls, self._uncounted = calls, uncounted

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            self._calls[func_packet] += 1
        elif _does_work(func_packet):
            self._uncounted[func_packet] += 1
        return super()._count_flops(func_packet, out, args, kwargs)


def _does_work(packet: Any) -> bool:
    """Opaque custom ops and backward kernels: work that no formula here accounts for."""
    name = str(packet)
    namespace = name.split(".", 1)[0]
    return namespace not in ("aten", "prim", "prims") or name.endswith("_backward")


def _inputs(model_or_fn, spec, device) -> tuple[torch.Tensor, ...]:
    if isinstance(spec, torch.Tensor):
        return (spec,)
    if isinstance(spec, (tuple, list)) and spec and all(isinstance(t, torch.Tensor) for t in spec):
        return tuple(spec)
    if isinstance(spec, (tuple, list, torch.Size)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in spec
    ):
        if device is None:
            params = list(model_or_fn.parameters()) if isinstance(model_or_fn, nn.Module) else []
            device = params[0].device if params else "cpu"
        return (torch.zeros(tuple(spec), device=device),)
    raise TypeError(
        "count_flops: expected an input shape (ints), a tensor or a tuple of tensors, "
        f"got {type(spec).__name__}"
    )


@contextlib.contextmanager
def _module_call(model_or_fn) -> Iterator[Callable[..., Any]]:
    if not isinstance(model_or_fn, nn.Module):
        yield model_or_fn
        return
    was_training = model_or_fn.training
    model_or_fn.eval()
    try:
        with torch.no_grad():
            yield model_or_fn
    finally:
        model_or_fn.train(was_training)


def _reference_gates() -> contextlib.AbstractContextManager:
    """attnlab's gate modules on their pure-PyTorch path (not the kernels)."""
    return kernels.backend("reference")


# ---- formulas -------------------------------------------------------------------------------


def _numel(shape: Any) -> int:
    return math.prod(shape) if shape is not None else 0


def _first(shape: Any) -> Any:
    """The first output's shape when an op returns several tensors."""
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (tuple, list)):
        return shape[0]
    return shape


def _per_output(cost: int) -> Formula:
    def formula(*args, out_shape=None, **kwargs):
        return 0, cost * _numel(_first(out_shape))

    return formula


def _per_input(cost: int) -> Formula:
    def formula(self_shape, *args, out_shape=None, **kwargs):
        return 0, cost * _numel(self_shape)

    return formula


def _window_pool(self_shape, *args, out_shape=None, **kwargs):
    kernel = args[0] if args else kwargs["kernel_size"]
    out = _first(out_shape)
    spatial = len(out) - 2 if len(out) > 2 else len(out) - 1
    kernel = list(kernel) if isinstance(kernel, (tuple, list)) else [kernel]
    if len(kernel) == 1:
        kernel = kernel * spatial
    return 0, _numel(out) * math.prod(kernel)


def _batch_stat_norm(self_shape, *args, out_shape=None, **kwargs):
    training = next((a for a in args if isinstance(a, bool)), kwargs.get("training", True))
    cost = NORM_BATCH_FLOPS if training else NORM_INFERENCE_FLOPS
    return 0, cost * _numel(self_shape)


def _blocked_pam_forward(q, k, v_t, block_size, want_received, out_shape=None, **kwargs):
    # q: B×N×d, k: B×d×N, v_t: B×N×C; scores q·k and probs·v per block, softmax per score.
    batch, n, d = q
    scores = batch * n * n
    return scores * (d + v_t[2]), SOFTMAX_FLOPS_PER_ELEMENT * scores + (
        scores if want_received else 0
    )


def _blocked_pam_backward(grad_out, q, k, v_t, out, lse, block_size, out_shape=None, **kwargs):
    # Recomputes q·k (d), then grad_v (C), grad_scores (C), grad_q (d), grad_k (d) per block;
    # elementwise: exp and the softmax-backward subtract/multiply per score, Σ dO·O per value.
    batch, n, d = q
    scores = batch * n * n
    return scores * (3 * d + 2 * v_t[2]), 4 * scores + 2 * _numel(grad_out)


def _aten(names: Sequence[str], in_place: bool = True) -> Iterator[Any]:
    for name in names:
        for variant in (name, name + "_") if in_place else (name,):
            packet = getattr(torch.ops.aten, variant, None)
            if packet is not None:
                yield packet


def _attnlab_ops() -> dict[Any, Formula]:
    from .. import layers  # noqa: F401  (registers attnlab's custom ops)

    namespace = torch.ops.attnlab
    formulas = {}
    for name, formula in (
        ("blocked_position_attention", _blocked_pam_forward),
        ("blocked_position_attention_backward", _blocked_pam_backward),
    ):
        packet = getattr(namespace, name, None)
        if packet is not None:
            formulas[packet] = formula
    return formulas


def _mapping(macs_of_custom: Counter) -> dict[Any, Callable[..., int]]:
    """custom_mapping for FlopCounterMode: each formula returns FLOPs = 2·MACs + extra and
    records its MACs in ``macs_of_custom`` (FlopCounterMode keeps one number per op)."""
    formulas: dict[Any, Formula] = {}
    formulas.update({p: _per_output(1) for p in _aten(ELEMENTWISE_OPS)})
    formulas.update({p: _per_output(SOFTMAX_FLOPS_PER_ELEMENT) for p in _aten(SOFTMAX_OPS, False)})
    formulas.update({p: _per_input(1) for p in _aten(REDUCTION_OPS, False)})
    formulas.update({p: _per_input(1) for p in _aten(ADAPTIVE_POOL_OPS, False)})
    formulas.update({p: _window_pool for p in _aten(WINDOW_POOL_OPS, False)})
    formulas.update({p: _per_input(NORM_INFERENCE_FLOPS) for p in _aten(NORM_INFERENCE_OPS)})
    formulas.update({p: _batch_stat_norm for p in _aten(NORM_BATCH_STAT_OPS, False)})
    formulas.update({p: _per_input(NORM_BATCH_FLOPS) for p in _aten(NORM_OPS, False)})
    formulas.update(_attnlab_ops())

    def wrap(packet, formula):
        def total(*args, **kwargs):
            macs, extra = formula(*args, **kwargs)
            macs_of_custom[packet] += macs
            return 2 * macs + extra

        return total

    return {packet: wrap(packet, formula) for packet, formula in formulas.items()}
