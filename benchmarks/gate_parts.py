"""What CBAM's parts cost in inference at ResNet-50's 16 bottleneck outputs, against the plain
network's inference pass: the floor under the gate's inference overhead.

ResNet-50 at batch 8, 160×160 has 16 bottleneck outputs (3 of 256×40×40, 4 of 512×20×20, 6 of
1024×10×10, 3 of 2048×5×5), float32, CPU, 2 threads, no grad. Each turn times, over the 16:

- ``plain network``: a whole plain ResNet-50 inference pass, the base of the ratios;
- ``pools``: CBAM's channel pool of x and spatial pool of x·M_c on the kernels (two reads of x);
- ``output pass``: relu((x·M_c)·M_s + shortcut) on the kernels;
- ``plain tail``: relu(x + shortcut) as the plain block computes it, which the output pass
  replaces;
- ``small layers``: CBAM's own MLP and k×k conv with their sigmoids on the pooled descriptors.

``floor`` = pools + output pass − plain tail + small layers: what the gate adds to the plain
network with nothing around those calls. Each time is the median over the turns; each ratio is
to the plain network's median.

Usage:
    python benchmarks/gate_parts.py [--turns 15] [--batch 8] [--size 160] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import attnlab
from attnlab import kernels
from attnlab.layers import CBAM

STAGES = ((256, 3, 4), (512, 4, 8), (1024, 6, 16), (2048, 3, 32))  # channels, blocks, stride


def block_shapes(batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """ResNet-50's 16 bottleneck output shapes for a batch of size×size images."""
    shapes = []
    for channels, blocks, stride in STAGES:
        side = max(1, size // stride)
        shapes += [(batch, channels, side, side)] * blocks
    return shapes


def candidates(batch: int, size: int) -> dict[str, Callable[[], object]]:
    """The timed calls (see the module doc), each over the 16 block shapes."""
    ops = kernels.cpu.ops()
    if ops is None:
        raise SystemExit(f"the CPU kernels are unavailable: {kernels.build_error()}")
    gen = torch.Generator().manual_seed(0)
    shapes = block_shapes(batch, size)
    xs = [torch.randn(s, generator=gen) for s in shapes]
    rs = [torch.randn(s, generator=gen) for s in shapes]
    cws = [torch.rand(b, c, generator=gen) for b, c, _, _ in shapes]
    sws = [torch.rand(b, h * w, generator=gen) for b, _, h, w in shapes]
    specs = [CBAM(c).eval().kernel_spec() for _, c, _, _ in shapes]
    pooled = [
        (torch.randn(b, c), torch.randn(b, c), torch.randn(b, 1, h, w), torch.randn(b, 1, h, w))
        for b, c, h, w in shapes
    ]
    model = attnlab.create_model("resnet50").eval()
    image = torch.randn(batch, 3, size, size, generator=gen)

    def pools() -> None:
        for x, cw in zip(xs, cws, strict=True):
            ops.channel_pool(x, True)
            ops.spatial_pool(x, cw)

    def output() -> None:
        for x, cw, sw, r in zip(xs, cws, sws, rs, strict=True):
            ops.gate_apply_relu(x, cw, sw, r)

    def tail() -> None:
        for x, r in zip(xs, rs, strict=True):
            torch.relu_(x + r)

    def small() -> None:
        for spec, (avg, mx, mean, smx) in zip(specs, pooled, strict=True):
            spec.channel(avg, mx)
            spec.spatial(mean, smx)

    return {
        "plain network": lambda: model(image),
        "pools": pools,
        "output pass": output,
        "plain tail": tail,
        "small layers": small,
    }


def parts(batch: int, size: int, turns: int) -> dict[str, float]:
    """Median seconds of each candidate over ``turns`` turns (one call each per turn, after one
    warm-up turn), and ``floor`` (see the module doc)."""
    fns = candidates(batch, size)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for turn in range(turns + 1):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                if turn:
                    times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    med["floor"] = med["pools"] + med["output pass"] - med["plain tail"] + med["small layers"]
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    med = parts(args.batch, args.size, args.turns)
    machine = platform.processor() or platform.machine()
    print(
        f"# {machine}, {args.threads} threads, torch {torch.__version__}, medians over "
        f"{args.turns} turns; ResNet-50's 16 block outputs, batch {args.batch}, "
        f"{args.size}×{args.size}, no grad\n\n| part | ms | share of the plain network |\n"
        "|---|---|---|"
    )
    base = med["plain network"]
    for name, seconds in med.items():
        print(f"| {name} | {1e3 * seconds:.1f} | {100 * seconds / base:.1f} % |")


if __name__ == "__main__":
    main()
