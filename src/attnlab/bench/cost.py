"""What a model costs: parameters, multiply-accumulates, and measured time.

MACs are the papers' "FLOPs"; they are counted by :func:`attnlab.bench.flops.count_flops`
(PyTorch's ``FlopCounterMode``: convolutions, linear layers, matmul/bmm, attention, reported as
2 FLOPs per multiply-accumulate), which also gives FLOPs including pooling, gates and norms.

Time is measured, not inferred — a gate's cost is memory traffic, not arithmetic:

- every candidate is warmed up, then timed in ``repeats`` rounds of ``number`` calls each; a
  round's figure is the median of its calls, the result the median of the rounds;
- :func:`compare_latency` interleaves the candidates round by round (A B C, A B C, …) so that
  drift (thermal, other processes, frequency) hits all of them alike, and reports each one's
  ratio to the first ("baseline") as the median of the per-round ratios of that same run;
- CUDA work is synchronized before and after every timed call. Threads
  (``torch.set_num_threads``) are the caller's choice.

Example:
    >>> import attnlab
    >>> from attnlab.bench import count_macs, count_params
    >>> model = attnlab.create_model("resnet50")
    >>> count_params(model)
    25557032
    >>> round(count_macs(model, (1, 3, 224, 224)) / 1e9, 2)
    4.09
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .flops import count_flops

# Automatic calls per round: enough for ~``ROUND_SECONDS`` per candidate, within these bounds.
ROUND_SECONDS, MAX_NUMBER = 0.1, 200


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (eval mode) on a zero input of ``input_shape``.

    Counted by ``FlopCounterMode`` (conv, linear, matmul, bmm, attention) as FLOPs / 2; see
    :func:`attnlab.bench.flops.count_flops` for FLOPs and the per-op breakdown.
    """
    return count_flops(model, input_shape)["macs"]


def compare_latency(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    repeats: int = 5,
    number: int | None = None,
    device: str | torch.device | None = None,
    round_seconds: float = ROUND_SECONDS,
) -> dict[str, Any]:
    """Times candidates against the first one, interleaved round by round.

    Args:
        fns: name → callable taking no arguments; the first is the baseline.
        warmup: untimed calls of each candidate (interleaved) before timing.
        repeats: timed rounds; each round times every candidate once, in order.
        number: calls per candidate per round; None picks, per candidate, enough calls for
            about ``round_seconds`` per round (1 to 200) from the last warm-up call.
        device: CUDA device to synchronize around each call, if any.
        round_seconds: the target of the automatic ``number``.

    Returns:
        ``{"baseline", "seconds": {name: median s per call}, "ratios": {name: median over
        rounds of (round median / baseline's round median)}, "rounds": {name: [round medians]},
        "number": {name: calls per round}, "repeats", "warmup", "device"}``.
    """
    if not fns:
        raise ValueError("compare_latency: no candidates")
    if repeats < 1 or warmup < 0 or (number is not None and number < 1):
        raise ValueError(
            f"compare_latency: need repeats >= 1, warmup >= 0, number >= 1 or None; "
            f"got {repeats}, {warmup}, {number}"
        )
    device = torch.device(device) if device is not None else None
    last: dict[str, float] = {}
    for _ in range(max(warmup, 1 if number is None else 0)):
        for name, fn in fns.items():
            last[name] = _timed_call(fn, device)
    calls = {
        name: number or min(MAX_NUMBER, max(1, math.ceil(round_seconds / max(last[name], 1e-7))))
        for name in fns
    }
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            rounds[name].append(
                statistics.median(_timed_call(fn, device) for _ in range(calls[name]))
            )
    baseline = next(iter(fns))
    return {
        "baseline": baseline,
        "seconds": {name: statistics.median(r) for name, r in rounds.items()},
        "ratios": {
            name: statistics.median(a / b for a, b in zip(r, rounds[baseline], strict=True))
            for name, r in rounds.items()
        },
        "rounds": rounds,
        "number": calls,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device) if device is not None else "cpu",
    }


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    warmup: int = 3,
    repeats: int = 5,
    number: int | None = 10,
) -> float:
    """Median seconds of one forward pass (eval mode, no grad) on a random input.

    Args:
        model: the model; its mode is restored afterwards.
        input_shape: input shape, batch included.
        warmup: untimed calls first.
        repeats: timed rounds; the result is the median of the rounds' medians.
        number: calls per round (None: automatic, see :func:`compare_latency`).
    """
    x = torch.randn(input_shape, device=_device(model))
    with inference_fn(model, x) as fn:
        timing = compare_latency(
            {"model": fn}, warmup=warmup, repeats=repeats, number=number, device=_device(model)
        )
    return timing["seconds"]["model"]


def measure_train_step(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    loss: str = "auto",
    warmup: int = 2,
    repeats: int = 5,
    number: int | None = 3,
) -> float:
    """Median seconds of one training step: zero grads, forward, loss, backward.

    Train mode (BatchNorm uses batch statistics); no optimizer update. The model's mode,
    buffers (BN running statistics) and gradients are restored afterwards.

    Args:
        model: the model.
        input_shape: input shape, batch included.
        loss: ``"ce"`` (cross-entropy on random labels, for B×K logits), ``"sum"`` (sum of the
            output) or ``"auto"`` (ce for 2-D outputs, else sum).
        warmup: untimed steps first.
        repeats: timed rounds; the result is the median of the rounds' medians.
        number: steps per round (None: automatic).
    """
    x = torch.randn(input_shape, device=_device(model))
    with train_step_fn(model, x, loss=loss) as fn:
        timing = compare_latency(
            {"model": fn}, warmup=warmup, repeats=repeats, number=number, device=_device(model)
        )
    return timing["seconds"]["model"]


@contextlib.contextmanager
def inference_fn(model: nn.Module, x: torch.Tensor) -> Iterator[Callable[[], Any]]:
    """A no-argument callable running ``model(x)`` in eval mode without grad; mode restored."""
    was_training = model.training
    model.eval()

    def call() -> Any:
        with torch.no_grad():
            return model(x)

    try:
        yield call
    finally:
        model.train(was_training)


@contextlib.contextmanager
def train_step_fn(
    model: nn.Module, x: torch.Tensor, *, loss: str = "auto"
) -> Iterator[Callable[[], None]]:
    """A no-argument callable running one training step of ``model`` on ``x`` (see
    :func:`measure_train_step`); mode, buffers and gradients are restored on exit."""
    if loss not in ("auto", "ce", "sum"):
        raise ValueError(f"train step: loss must be 'auto', 'ce' or 'sum', got {loss!r}")
    was_training = model.training
    buffers = [b.detach().clone() for b in model.buffers()]
    grads = [p.grad for p in model.parameters()]
    model.train()
    with torch.no_grad():
        shape = model(x).shape
    use_ce = loss == "ce" or (loss == "auto" and len(shape) == 2)
    target = torch.randint(shape[1], (shape[0],), device=x.device) if use_ce else None

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        value = F.cross_entropy(out, target) if use_ce else out.float().sum()
        value.backward()

    try:
        yield step
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        for param, grad in zip(model.parameters(), grads, strict=True):
            param.grad = grad


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _timed_call(fn: Callable[[], Any], device: torch.device | None) -> float:
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
