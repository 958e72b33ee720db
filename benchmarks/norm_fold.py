"""What folding the block's last BatchNorm into the gate's call saves at inference, in the network.

At inference each ResNet block calls ``fused.residual_relu(attn, out, shortcut, bn3)``: each
of the gate's passes reads the norm's input and normalises it on the fly, so the norm costs no
pass of its own and its output is never written. This times those calls inside ResNet-50 (batch 8,
2 threads, no grad), pass by pass, alternating the fold with the same call on the norm's own
output (``residual_relu(attn, bn3(out), shortcut)``: the norm run as a module, as without the
fold), and prints per pass the medians of both and the median and quartiles of the paired
differences (fold minus no fold; negative: the fold is faster). The calls' wall clock includes
the norm either way. As in gate_overhead.py, glibc is told to keep freed memory.

A measurement that flushes the caches before each call overstates the gain: in the network the
norm's input has just been written by the convolution, and the unfused gate reads the norm's
output right after the norm wrote it, both from the 32 MB cache here at 160×160.

    python benchmarks/norm_fold.py [--attn cbam se eca] [--passes 60] [--size 160]
                                   [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import attnlab
from attnlab.layers import fused
from attnlab.models import resnet
from gate_overhead import add_network_options, prepare_network_run  # sys.path[0]


def paired(model, x, passes: int) -> tuple[list[float], list[float]]:
    """Per-pass totals of the blocks' residual_relu calls, with and without the fold."""
    inner = fused.residual_relu
    spent: list[float] = []

    def wrap(fold: bool):
        def call(attn, out, shortcut, norm=None):
            start = time.perf_counter()
            if fold or norm is None:
                result = inner(attn, out, shortcut, norm)
            else:
                result = inner(attn, norm(out), shortcut)
            spent.append(time.perf_counter() - start)
            return result

        return call

    totals: dict[bool, list[float]] = {True: [], False: []}
    try:
        with torch.no_grad():
            for i in range(passes + 2):
                for fold in (True, False):
                    resnet.fused.residual_relu = wrap(fold)
                    spent.clear()
                    model(x)
                    if i >= 2:  # two warm-up passes each
                        totals[fold].append(sum(spent))
    finally:
        resnet.fused.residual_relu = inner
    return totals[True], totals[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn", nargs="+", default=["cbam", "se", "eca"])
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--size", type=int, default=160)
    add_network_options(parser)
    args = parser.parse_args()
    malloc, fmt = prepare_network_run(args)
    torch.manual_seed(0)
    x = torch.randn(8, 3, args.size, args.size).contiguous(memory_format=fmt)
    print(f"# ResNet-50, batch 8, {args.size}×{args.size}, {args.threads} threads, inference, "
          f"{'channels-last' if args.channels_last else 'NCHW'}, malloc {malloc}; the blocks' "
          f"residual_relu calls, ms per pass, {args.passes} passes each\n")  # fmt: skip
    print("| attention | norm folded | norm as a module | paired difference (quartiles) |")
    print("|---|---|---|---|")
    for name in args.attn:
        model = attnlab.create_model("resnet50", attn=name).eval().to(memory_format=fmt)
        fold, unfolded = paired(model, x, args.passes)
        diff = [a - b for a, b in zip(fold, unfolded, strict=True)]
        q1, q2, q3 = statistics.quantiles(diff, n=4)
        print(f"| {name} | {1e3 * statistics.median(fold):.2f} | "
              f"{1e3 * statistics.median(unfolded):.2f} | **{1e3 * q2:+.2f}** "
              f"({1e3 * q1:+.2f} to {1e3 * q3:+.2f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
