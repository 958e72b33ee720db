"""Cost of the observable-map taps on the normal (unobserved) forward path.

Each attention module routes its maps through MapTap identity submodules. This script times
each registered module's forward with its taps, and a copy whose taps are replaced by plain
functions, at ResNet-50 stage-2 size (8×512×28×28, float32, no grad). Medians of --runs
rounds of --iters calls each, measured alternately in the same run.

Usage:
    python benchmarks/map_tap_overhead.py [--runs 7] [--iters 20] [--shape 8 512 28 28]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import attnlab
from attnlab.layers import MapTap


class PlainIdentity:
    """A function-like stand-in for a tap: no module call machinery, never observed."""

    observed = False

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def without_taps(module: torch.nn.Module) -> torch.nn.Module:
    stripped = copy.deepcopy(module)
    for parent in list(stripped.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MapTap):
                delattr(parent, name)
                setattr(parent, name, PlainIdentity())
    for m in stripped.modules():
        assert not any(isinstance(c, MapTap) for c in m.children())
    return stripped


def seconds_per_call(module, x, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        module(x)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 512, 28, 28])
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(*args.shape)
    print(f"forward, no grad, input {tuple(x.shape)}, median of {args.runs} × {args.iters} calls")
    print(f"{'module':8} {'with taps':>12} {'without':>12} {'ratio':>7}")
    with torch.no_grad():
        for name in attnlab.list_attention():
            if name == "pam" and x.shape[2] * x.shape[3] > 64 * 64:
                continue
            tapped = attnlab.create_attention(name, x.shape[1]).eval()
            plain = without_taps(tapped)
            torch.testing.assert_close(plain(x), tapped(x))
            for m in (tapped, plain):  # warm-up
                seconds_per_call(m, x, 3)
            with_t, without_t = [], []
            for _ in range(args.runs):
                with_t.append(seconds_per_call(tapped, x, args.iters))
                without_t.append(seconds_per_call(plain, x, args.iters))
            a, b = statistics.median(with_t), statistics.median(without_t)
            print(f"{name:8} {a * 1e3:>9.3f} ms {b * 1e3:>9.3f} ms {a / b:>6.3f}×")


if __name__ == "__main__":
    main()
