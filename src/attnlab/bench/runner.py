"""The cost benchmarks behind ``attnlab bench``: modules alone, whole networks, papers' tables.

- :func:`bench_modules`: each registered attention module at the four ResNet-50 stage output
  shapes (B×256×(s/4)², B×512×(s/8)², B×1024×(s/16)², B×2048×(s/32)²): parameters, MACs,
  FLOPs, forward and forward+backward time and peak memory, with same-run ratios to a
  module-free reference of the same shape — forward: ``x.clone()``; forward+backward:
  ``(x * 1).backward(g)`` (one full-size write each way plus x's gradient, the least any
  plug-in module must do). Backward passes use one fixed random output gradient g.
- :func:`bench_models`: a network without attention and with each attention: parameters, MACs,
  FLOPs, inference and training-step time and peak memory, ratios to the baseline of the same
  run (variants interleaved round by round).
- :func:`attnlab.bench.papers.paper_macs_table`: our parameters and MACs next to the papers'.

MACs and FLOPs are per image (conventions: :mod:`attnlab.bench.flops`); times are for the
whole batch; peak memory is tensor memory (:mod:`attnlab.bench.memory`).

Example:
    >>> from attnlab.bench.runner import stage_shapes
    >>> stage_shapes(8, 224)
    [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7)]
"""

from __future__ import annotations

import contextlib
import math
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..registry import create_attention, create_model, list_attention
from .cost import compare_latency, count_params, inference_fn, train_step_fn
from .flops import count_flops
from .memory import peak_memory

STAGE_CHANNELS = (256, 512, 1024, 2048)  # ResNet-50 stage outputs, strides 4, 8, 16, 32
STAGE_ATTENTION = frozenset({"bam"})  # placed after stages (stage_attn=) in a network
MIB, GIB = 2**20, 2**30
REFERENCE = {"fwd": "x.clone()", "fwdbwd": "(x * 1).backward(g)"}


def stage_shapes(batch: int, image_size: int) -> list[tuple[int, int, int, int]]:
    """The four ResNet-50 stage output shapes for ``image_size`` inputs (stem: two /2 steps)."""
    size, shapes = math.ceil(math.ceil(image_size / 2) / 2), []
    for i, channels in enumerate(STAGE_CHANNELS):
        size = size if i == 0 else math.ceil(size / 2)
        shapes.append((batch, channels, size, size))
    return shapes


def bench_modules(
    names: Sequence[str] | None = None,
    *,
    batch: int = 8,
    image_size: int = 224,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 2,
    max_gib: float = 4.0,
    round_seconds: float = 0.1,
    stages: Sequence[int] = (1, 2, 3, 4),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmarks attention modules alone at the ResNet-50 stage shapes.

    Args:
        names: registered attention names (default: all).
        batch: batch size B.
        image_size: the network input size s the stage shapes derive from.
        device: ``"cpu"`` or ``"cuda"``.
        repeats: timed rounds; at each stage all modules and the reference are interleaved.
        warmup: untimed calls per candidate first.
        max_gib: modules whose estimated training peak exceeds this are skipped, and the row
            says why (PAM's N×N scores are blocked, so it only trips on huge maps).
        round_seconds: calls per candidate and round are chosen to last about this long.
        stages: which of the four stage shapes (1-based).
        log: progress lines.

    Returns:
        ``{"batch", "image_size", "device", "repeats", "reference", "rows"}``: one row per
        stage and module, plus one ``"reference"`` row per stage.
    """
    names = list(names) if names is not None else list_attention()
    if not stages or any(s not in (1, 2, 3, 4) for s in stages):
        raise ValueError(f"bench_modules: stages must be among 1, 2, 3, 4; got {list(stages)}")
    options = {
        "warmup": warmup,
        "repeats": repeats,
        "device": device,
        "round_seconds": round_seconds,
    }
    rows: list[dict[str, Any]] = []
    for stage, shape in enumerate(stage_shapes(batch, image_size), start=1):
        if stage in stages:
            log(f"stage {stage}: {'×'.join(map(str, shape))}, {len(names)} modules …")
            rows += _bench_stage(stage, shape, names, options, max_gib)
    return {
        "batch": batch,
        "image_size": image_size,
        "device": str(device),
        "repeats": repeats,
        "reference": dict(REFERENCE),
        "rows": rows,
    }


def _bench_stage(stage, shape, names, options: dict, max_gib: float) -> list[dict[str, Any]]:
    device = options["device"]
    x = torch.randn(shape, device=device)
    xg = x.detach().clone().requires_grad_()
    g = torch.randn(shape, device=device)  # plug-in modules: output shape == input shape
    where = {"stage": stage, "shape": list(shape)}
    rows = {
        "reference": {
            **where,
            "attention": "reference",
            "params": 0,
            "macs": 0,
            "flops": 0,
            "note": f"fwd {REFERENCE['fwd']}; fwd+bwd {REFERENCE['fwdbwd']}",
        }
    }
    modules = {}
    for name in names:
        module = create_attention(name, shape[1]).to(device)
        need = _estimated_bytes(name, module, shape)
        if need > max_gib * GIB:
            note = f"skipped: needs ~{need / GIB:.1f} GiB (> {max_gib:g})"
            rows[name] = {**where, "attention": name, "note": note}
            continue
        modules[name] = module
        counts = count_flops(module, (1, *shape[1:]))
        rows[name] = {
            **where,
            "attention": name,
            "params": count_params(module),
            "macs": counts["macs"],
            "flops": counts["flops"],
            "note": _module_note(name, module, shape),
        }
    # Forward in eval mode, then forward+backward in train mode; one interleaved run each.
    fwd = {"reference": x.clone, **{n: _eval_fn(m, x) for n, m in modules.items()}}
    _probe(fwd, rows, "forward")
    _record(rows, "fwd", fwd, compare_latency(fwd, **options))
    for module in modules.values():
        module.train()
    fwdbwd = {"reference": _backward_fn(lambda t: t * 1, xg, g, None)}
    fwdbwd.update({n: _backward_fn(m, xg, g, m) for n, m in modules.items() if n in fwd})
    _probe(fwdbwd, rows, "forward+backward")
    _record(rows, "fwdbwd", fwdbwd, compare_latency(fwdbwd, **options))
    return list(rows.values())


def _probe(fns: dict, rows: dict, what: str) -> None:
    """Calls each candidate once; one that fails at this shape (e.g. BatchNorm on a single
    value per channel in training) is dropped, its row saying why, instead of ending the run."""
    for name in [n for n in fns if n != "reference"]:
        try:
            fns[name]()
        except (RuntimeError, ValueError) as err:
            del fns[name]
            message = (str(err).strip().splitlines() or [type(err).__name__])[0]
            rows[name]["note"] = f"{what} failed: {message}"


def _record(rows: dict, key: str, fns: dict, timing: dict) -> None:
    """Time and ratio from ``timing``, and the peak memory of one more call of each."""
    for name, fn in fns.items():
        rows[name][f"{key}_ms"] = 1e3 * timing["seconds"][name]
        rows[name][f"{key}_ratio"] = timing["ratios"][name]
        rows[name][f"peak_{key}_mib"] = peak_memory(fn, device=timing["device"]) / MIB


def bench_models(
    model: str = "resnet50",
    attns: Sequence[str] = ("se", "cbam", "eca", "bam", "ca"),
    *,
    batch: int = 8,
    image_size: int = 224,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    round_seconds: float = 0.1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmarks a network without and with each attention, interleaved in one run.

    BAM goes in after stages (``stage_attn="bam"``), the others inside every block
    (``attn=name``), as in their papers. Inference: eval mode, no grad. Training step: zero
    grads, forward, cross-entropy on random labels, backward (no optimizer update).

    Args:
        model: registered model name.
        attns: attention names; the baseline (``attn=None``) always comes first.
        batch: batch size.
        image_size: input size (square).
        device: ``"cpu"`` or ``"cuda"``.
        repeats: timed rounds.
        warmup: untimed calls per variant first.
        round_seconds: calls per variant and round are chosen to last about this long.
        log: progress lines.

    Returns:
        ``{"model", "batch", "image_size", "device", "repeats", "rows"}``.
    """
    variants: dict[str, dict[str, Any]] = {"baseline": {}}
    for name in attns:
        variants[name] = {"stage_attn": name} if name in STAGE_ATTENTION else {"attn": name}
    networks = {name: create_model(model, **opts).to(device) for name, opts in variants.items()}
    shape = (batch, 3, image_size, image_size)
    x = torch.randn(shape, device=device)
    timings, peaks = {}, {}
    for key, make in (("infer", inference_fn), ("train", train_step_fn)):
        log(f"{model}, {len(networks)} variants, {'×'.join(map(str, shape))}: {key} …")
        with contextlib.ExitStack() as stack:
            fns = {n: stack.enter_context(make(net, x)) for n, net in networks.items()}
            timings[key] = compare_latency(
                fns, warmup=warmup, repeats=repeats, device=device, round_seconds=round_seconds
            )
            peaks[key] = {n: peak_memory(fn, device=device) for n, fn in fns.items()}
    rows = []
    for name, net in networks.items():
        counts = count_flops(net, (1, *shape[1:]))
        row = {
            "variant": name,
            "options": variants[name],
            "params": count_params(net),
            "macs": counts["macs"],
            "flops": counts["flops"],
        }
        for key in ("infer", "train"):
            row[f"{key}_ms"] = 1e3 * timings[key]["seconds"][name]
            row[f"{key}_ratio"] = timings[key]["ratios"][name]
            row[f"peak_{key}_mib"] = peaks[key][name] / MIB
        row["peak_train_ratio"] = peaks["train"][name] / max(1, peaks["train"]["baseline"])
        rows.append(row)
    return {
        "model": model,
        "batch": batch,
        "image_size": image_size,
        "device": str(device),
        "repeats": repeats,
        "rows": rows,
    }


def environment(device: str, *, probe_kernels: bool = True) -> dict[str, Any]:
    """Device, threads, versions and attnlab's gate backend, recorded with every result.

    ``probe_kernels`` also records whether the CPU gate kernels load (which builds them,
    about a minute, if they were not built yet).
    """
    from .. import __version__

    cuda = str(device).startswith("cuda")
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "attnlab": __version__,
        "python": platform.python_version(),
        "gate_backend": kernels.get_backend(),
    }
    if probe_kernels:
        info["fast_kernels"] = kernels.available()
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _eval_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    module.eval()

    def call() -> Any:
        with torch.no_grad():
            return module(x)

    return call


def _backward_fn(fn, xg: torch.Tensor, g: torch.Tensor, module) -> Callable[[], None]:
    """Forward on ``xg``, backward with the fixed gradient ``g``; gradients reset every call."""

    def call() -> None:
        xg.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
        fn(xg).backward(g)

    return call


def _estimated_bytes(name: str, module: nn.Module, shape: Sequence[int]) -> float:
    """Rough training peak: PAM's N×N or CAM's C×C matrices, plus a few copies of x."""
    batch, channels, height, width = shape
    linear, n = 8 * 4 * math.prod(shape), height * width
    if name == "pam":
        rows = module.block_size or max(1, module.max_block_elements // n)
        # Plain formulation: scores, probabilities and their gradients; blocked: a few blocks.
        return linear + (16 * batch * n * n if rows >= n else 12 * rows * n)
    if name == "cam":
        return linear + 20 * batch * channels * channels
    return linear


def _module_note(name: str, module: nn.Module, shape: Sequence[int]) -> str:
    if name != "pam":
        return ""
    n = shape[2] * shape[3]
    rows = module.block_size or max(1, module.max_block_elements // n)
    return "N×N scores in blocks" if rows < n else "plain N×N formulation"
