"""Time and peak memory of the Non-local block: linear-memory paths vs the dense N×M form.

For each pairwise function (``--modes``) and map size S (``--sizes``), one fresh child process
per measurement builds ``NonLocalBlock(C, mode=…)`` (weights perturbed away from the identity
init), warms both paths up on a tiny map, resets the kernel's peak-RSS mark, runs one forward
(no grad, or forward + backward with ``--train``) on 1×C×S×S float32, and reports the growth
of the peak resident set over the resident set just before the call and the call's wall time.
Figures are medians over ``--runs`` children; the ratio columns are dense / linear of the same
run set. The dense form at 224×224 needs two N×N float32 matrices of 9.4 GiB each and is not
run there (``--dense-max`` bounds the sizes it runs at).

Usage:
    python benchmarks/selfattn_memory.py                      # 32…128 both, 224 linear only
    python benchmarks/selfattn_memory.py --modes concatenation --sizes 32 64 --runs 5
    python benchmarks/selfattn_memory.py --train --sizes 32 64 --no-224
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GIB = 1024**3
MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


def child(size: int, channels: int, mode: str, path: str, train: bool) -> dict:
    import torch

    from attnlab.bench.memory import rss_growth
    from attnlab.layers import NonLocalBlock

    def build(block_size: int | None) -> NonLocalBlock:
        torch.manual_seed(0)
        module = NonLocalBlock(channels, mode=mode, block_size=block_size).eval()
        with torch.no_grad():
            module.norm.weight.fill_(0.5)  # away from the identity init
        return module

    # None: blocks of at most 4M scores (the default); 10**12: one block, the dense form.
    module = build(None if path == "linear" else 10**12)
    x = torch.randn(1, channels, size, size, requires_grad=train)
    warm = torch.randn(1, channels, 6, 6, requires_grad=train)
    for block in (2, 10**12):  # first dispatch of each path, not counted
        probe = build(block)
        probe(warm).sum().backward() if train else probe(warm)

    def run() -> None:
        if train:
            module(x).square().mean().backward()
        else:
            with torch.no_grad():
                module(x)

    start = time.perf_counter()
    growth = rss_growth(run)["growth_bytes"]
    return {"growth_bytes": growth, "seconds": time.perf_counter() - start}


def measure(size: int, args: argparse.Namespace, mode: str, path: str, runs: int) -> dict:
    results = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--child", str(size), str(args.channels), mode, path]
        cmd += ["--train"] if args.train else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "growth_gib": statistics.median(r["growth_bytes"] for r in results) / GIB,
        "seconds": statistics.median(r["seconds"] for r in results),
        "runs": runs,
    }


def fmt(result: dict | None) -> str:
    if result is None:
        return "not run"
    if "error" in result:
        return "error"
    return f"{result['growth_gib']:.3f} G {result['seconds']:.2f}s"


def ratios(dense: dict | None, linear: dict) -> str:
    if not dense or "growth_gib" not in dense or "growth_gib" not in linear:
        return "-"
    mem = dense["growth_gib"] / max(linear["growth_gib"], 1e-6)
    return f"{mem:6.1f}× {dense['seconds'] / max(linear['seconds'], 1e-9):5.2f}×"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=128, help="largest S for the dense form")
    parser.add_argument("--train", action="store_true", help="forward + backward")
    parser.add_argument("--no-224", dest="big", action="store_false", help="skip 224×224")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, channels, mode, path = args.child
        print(json.dumps(child(int(size), int(channels), mode, path, args.train)))
        return 0

    what = "forward+backward" if args.train else "forward, no grad"
    print(
        f"NonLocalBlock peak-RSS growth and time, 1×{args.channels}×S×S float32, {what}, "
        f"median of {args.runs} runs (224: 1 run)"
    )
    print(f"{'mode':<18} {'S':>4} {'N×N f32':>9} {'linear':>16} {'dense':>16} {'mem, time':>14}")
    rows = []
    sizes = args.sizes + ([224] if args.big and 224 not in args.sizes else [])
    for mode in args.modes:
        for size in sizes:
            runs = 1 if size == 224 else args.runs
            linear = measure(size, args, mode, "linear", runs)
            dense = measure(size, args, mode, "dense", runs) if size <= args.dense_max else None
            n = size * size
            rows.append({"mode": mode, "size": size, "linear": linear, "dense": dense})
            print(
                f"{mode:<18} {size:>4} {n * n * 4 / GIB:>7.2f} G {fmt(linear):>16} "
                f"{fmt(dense):>16} {ratios(dense, linear):>14}"
            )
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
