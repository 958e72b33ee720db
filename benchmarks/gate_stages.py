"""A gate's training call in a ResNet-50 block, stage by stage: its own cost.

For each attention and each ResNet-50 stage output (batch 8, 160×160 input: 256×40×40,
512×20×20, 1024×10×10, 2048×5×5) this times, in turns, forward+backward of

- the gate with the block's tail, ``fused.residual_relu(attn, x, shortcut)`` (what the ResNet
  blocks run on the fast path: relu(attn(x) + shortcut) in one operator call each way),
- the tail alone, ``relu(x + shortcut)`` (what a block without attention runs there),
- ``x.clone()`` (the time to read and write the tensor once),

With --norm the block's last BatchNorm (training mode) is on both sides: the gate's call
``fused.residual_relu(attn, x, shortcut, bn)``, which runs the norm in the gate's own passes
(SE, ECA: attnlab_fast::gate_bn_train; CBAM: gate_norm_train), against ``relu(bn(x) +
shortcut)``, the plain block's norm and tail.

each turn 10 back-to-back calls of each (their median), --rounds turns; a time is the median
over the turns, "gate − tail" the median over the turns of the two sides' difference in the
same turn. Warm: the data and weights are in cache, as they are not in a network (see the
README: "Everything runs cold"); this is the gate's arithmetic and passes, stage by stage.

To compare two versions of the kernels, run it from each (an older commit through
``PYTHONPATH=<worktree>/src:benchmarks``), alternating.

Usage:
    python benchmarks/gate_stages.py                  # SE, ECA, CBAM, every stage
    python benchmarks/gate_stages.py --attn se --stages 3 4 --rounds 25
    python benchmarks/gate_stages.py --norm           # the block's BatchNorm on both sides
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import attnlab
from attnlab.layers import fused
from gate_overhead import add_malloc_option, apply_malloc

STAGES = {1: (256, 40), 2: (512, 20), 3: (1024, 10), 4: (2048, 5)}


def _median_call(fn, number: int) -> float:
    calls = []
    for _ in range(number):
        start = time.perf_counter()
        fn()
        calls.append(time.perf_counter() - start)
    return statistics.median(calls)


# The autograd nodes of the gates' training calls that run the block's norm.
NORM_NODES = ("GateBnFn", "GateNormFn")


def stage_row(
    name: str, stage: int, *, batch: int, rounds: int, number: int, norm: bool = False
) -> dict:
    channels, size = STAGES[stage]
    torch.manual_seed(0)
    shape = (batch, channels, size, size)
    x = torch.randn(shape).requires_grad_()
    shortcut = torch.randn(shape).requires_grad_()
    grad = torch.randn(shape)
    attn = attnlab.create_attention(name, channels)
    bn = torch.nn.BatchNorm2d(channels).train() if norm else None

    def gate():
        x.grad = shortcut.grad = None
        out = fused.residual_relu(attn, x, shortcut, bn)
        if out is None:
            raise SystemExit(f"{name}: fused.residual_relu declined (no fast path here)")
        if norm and not any(n in out.grad_fn.name() for n in NORM_NODES):
            raise SystemExit(f"{name}: the gate's call did not run the norm ({out.grad_fn.name()})")
        out.backward(grad)

    def tail():
        x.grad = shortcut.grad = None
        torch.relu((bn(x) if norm else x) + shortcut).backward(grad)

    def clone():
        x.detach().clone()

    fns = {"gate": gate, "tail": tail, "clone": clone}
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(_median_call(fn, number))
    diffs = [g - t for g, t in zip(times["gate"], times["tail"], strict=True)]
    return {
        "attn": name, "shape": shape, **{key: statistics.median(v) for key, v in times.items()},
        "gate_minus_tail": statistics.median(diffs),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn", nargs="+", default=["se", "eca", "cbam"])
    parser.add_argument(
        "--stages", nargs="+", type=int, choices=sorted(STAGES), default=sorted(STAGES)
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--norm", action="store_true", help="the block's BatchNorm on both sides")
    add_malloc_option(parser)
    args = parser.parse_args()
    malloc = apply_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"fused kernels unavailable: {fused.build_error()}")
    print(
        f"# torch {torch.__version__}, {args.threads} threads, malloc {malloc}, medians over "
        f"{args.rounds} turns of {args.number} calls; forward+backward, µs per call"
        f"{'; the block norm (training mode) on both sides' if args.norm else ''}\n"
    )
    what = ("gate + norm + tail", "norm + tail") if args.norm else ("gate + tail", "tail alone")
    print(f"| attention | stage output | {what[0]} | {what[1]} | gate − tail | clone |")
    print("|---|---|---|---|---|---|")
    for name in args.attn:
        for stage in args.stages:
            row = stage_row(
                name, stage, batch=args.batch, rounds=args.rounds, number=args.number,
                norm=args.norm,
            )  # fmt: skip
            print(
                f"| {name} | {'×'.join(map(str, row['shape']))} | {1e6 * row['gate']:.0f} "
                f"| {1e6 * row['tail']:.0f} | **{1e6 * row['gate_minus_tail']:.0f}** "
                f"| {1e6 * row['clone']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
