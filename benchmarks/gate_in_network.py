"""Where a fused gate's time goes inside a network, stage by stage, against the same call alone.

In ResNet-50 (batch 8, 160×160, 2 threads, inference) every bottleneck calls
``fused.residual_relu(attn, out, shortcut, bn3)``: the block's last BatchNorm, the gate and the
block's tail in one operator call. This wraps that function and times each call inside the
network (wall clock, the call's Python and operator together), then, per stage shape, the same
call alone:

- ``in network``: median per call while the network runs (the data and the gate's own code
  and weights come cold: the convolutions between two gates stream tens of megabytes);
- ``Python only``: the same, with the operator replaced by a stub that returns its input (the
  eligibility and kept-plan checks, the argument lists, the call: since the 2026-11-22 fifth
  session mostly in C, ``csrc/entry.h``, with ``--no-entry`` all in Python as before);
- ``alone, warm`` / ``alone, flushed``: the call on the stage's shape, 20 back-to-back calls,
  or each after a 64 MB write has flushed the caches;
- ``bn+add+relu``: the plain block's own bn3 and tail, ``relu(bn3(out) + shortcut)``, alone,
  warm and flushed: what the fused call replaces.

So ``in network - bn+add+relu (flushed)`` is roughly what the gate adds to a block, and the gap
between ``in network`` and ``alone, warm`` is the price of running cold. Medians over --runs
inference passes (after two warm-up passes). Nothing is cached between calls. As in
gate_overhead.py, glibc is told to keep freed memory (--malloc steady), so that neither the
gate nor the plain tail pays page faults for memory it re-touches.

    python benchmarks/gate_in_network.py [--attn cbam] [--runs 20] [--channels-last] [--no-entry]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import torch

import attnlab
from attnlab.layers import fused
from attnlab.models import resnet
from gate_overhead import add_network_options, prepare_network_run  # sys.path[0]
from memory_floor import timed


@contextlib.contextmanager
def timed_calls(record: dict, *, stub: bool):
    """Times every fused.residual_relu call the ResNet blocks make, by input shape; with
    ``stub`` the gate operator returns its input instead of running."""
    inner = fused.residual_relu
    ops = torch.ops.attnlab_fast
    op = ops.gate_forward

    def wrapper(attn, x, shortcut, norm=None):
        start = time.perf_counter()
        out = inner(attn, x, shortcut, norm)
        if out is not None:
            record[tuple(x.shape)].append(time.perf_counter() - start)
        return out

    resnet.fused.residual_relu = wrapper
    entry = fused._state["module"]  # the C entry (csrc/entry.h), where it was built
    if stub:
        ops.gate_forward = lambda x, *args: (x,)
        if entry is not None:
            entry.set_dry_run(True)  # its checks, then x returned instead of the operator's call
    try:
        yield
    finally:
        resnet.fused.residual_relu = inner
        if stub:
            ops.gate_forward = op
            if entry is not None:
                entry.set_dry_run(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn", default="cbam")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--no-entry", action="store_true", help="the Python path only (no C entry: csrc/entry.h)"
    )
    add_network_options(parser)
    args = parser.parse_args()
    malloc, fmt = prepare_network_run(args)
    torch.manual_seed(0)
    model = attnlab.create_model("resnet50", attn=args.attn).eval().to(memory_format=fmt)
    fused._load()
    if args.no_entry:
        fused._state["entry"] = None
    x = torch.randn(8, 3, 160, 160).contiguous(memory_format=fmt)

    results = {}
    for stub in (False, True):
        record: dict = defaultdict(list)
        with torch.no_grad(), timed_calls(record, stub=stub):
            for _ in range(2):
                model(x)
            record.clear()
            for _ in range(args.runs):
                model(x)
        results[stub] = record
    if not results[False]:
        raise SystemExit(f"no fused residual calls: is {args.attn!r} SE, ECA or CBAM?")

    big = torch.empty(16 << 20)  # 64 MB

    def flush():
        big.add_(1)

    gates = {  # channels → (the gate, the norm before it)
        m.attn.channels: (m.attn, m.bn3)
        for m in model.modules()
        if isinstance(m, resnet.Bottleneck)
    }
    print(f"# ResNet-50 + {args.attn}, batch 8, 160×160, {args.threads} threads, inference, "
          f"{'channels-last' if args.channels_last else 'NCHW'}, malloc {malloc}, "
          f"{'C entry' if fused._state['entry'] is not None else 'Python path'}; µs per call "
          "(medians)\n")  # fmt: skip
    print("| stage shape | calls / pass | in network | Python only | alone, warm | "
          "alone, flushed | bn+add+relu warm / flushed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    totals = defaultdict(float)
    for shape, calls in sorted(results[False].items(), key=lambda item: item[0][1]):
        per_pass = len(calls) // args.runs
        out = torch.randn(shape).contiguous(memory_format=fmt)
        short = torch.randn(shape).contiguous(memory_format=fmt)

        def gate(attn=gates[shape[1]][0], norm=gates[shape[1]][1], out=out, short=short):
            return fused.residual_relu(attn, out, short, norm)

        def tail(norm=gates[shape[1]][1], out=out, short=short):
            return torch.add(norm(out), short).relu_()

        with torch.no_grad():
            warm, cold = timed(gate, runs=20), timed(gate, flush, runs=20)
            tail_warm, tail_cold = timed(tail, runs=20), timed(tail, flush, runs=20)
        row = {
            "net": statistics.median(calls), "py": statistics.median(results[True][shape]),
            "warm": warm, "cold": cold, "tail_warm": tail_warm, "tail_cold": tail_cold,
        }  # fmt: skip
        for key, value in row.items():
            totals[key] += per_pass * value
        us = {key: f"{1e6 * value:.0f}" for key, value in row.items()}
        print(f"| {'×'.join(map(str, shape))} | {per_pass} | {us['net']} | {us['py']} | "
              f"{us['warm']} | {us['cold']} | {us['tail_warm']} / {us['tail_cold']} |")  # fmt: skip
    ms = {key: f"{1e3 * value:.2f}" for key, value in totals.items()}
    print(f"| **per pass (ms)** | | {ms['net']} | {ms['py']} | {ms['warm']} | {ms['cold']} | "
          f"{ms['tail_warm']} / {ms['tail_cold']} |")  # fmt: skip


if __name__ == "__main__":
    main()
