"""Peak memory of DANet position attention (PAM): blocked (attnlab) vs the unblocked N×N form.

Each measurement runs in a fresh child process: it builds the module and the input, resets
the kernel's peak-RSS mark (/proc/self/clear_refs), runs one forward, and reports the growth
of the peak resident set over the resident set just before the forward. Figures are medians
over --runs children.

Targets (issue 2): 1×512×128×128 float32 forward without grad grows the peak by < 0.6 GiB
(the unblocked form needs > 2 GiB: two N×N float32 matrices of 1 GiB each); 1×512×224×224
completes.

Usage:
    python benchmarks/pam_memory.py                 # 32…128 blocked vs unblocked, 224 blocked
    python benchmarks/pam_memory.py --sizes 64 128 --runs 5 --no-224
    python benchmarks/pam_memory.py --train --sizes 32 64   # forward + backward
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

GIB = 1024**3


def child(size: int, channels: int, mode: str, train: bool) -> dict:
    import torch

    from attnlab.bench.memory import rss_growth
    from attnlab.layers import PositionAttention

    torch.manual_seed(0)
    block_size = None if mode == "blocked" else 10**12  # one block = the N×N formulation
    module = PositionAttention(channels, block_size=block_size)
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(1, channels, size, size, requires_grad=train)
    # Warm up on a tiny input through both paths (plain, and the blocked custom op, whose
    # first dispatch costs ~1 s once), so one-time costs are not counted.
    warm = torch.randn(1, channels, 4, 4, requires_grad=train)
    for block in (None, 3):
        probe = PositionAttention(channels, block_size=block)
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


def measure(size: int, channels: int, mode: str, train: bool, runs: int) -> dict:
    results = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--child", str(size), str(channels), mode]
        cmd += ["--train"] if train else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "growth_gib": statistics.median(r["growth_bytes"] for r in results) / GIB,
        "seconds": statistics.median(r["seconds"] for r in results),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="forward + backward")
    parser.add_argument("--no-224", dest="big", action="store_false", help="skip 224×224")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, channels, mode = args.child
        print(json.dumps(child(int(size), int(channels), mode, args.train)))
        return 0

    what = "forward+backward" if args.train else "forward, no grad"
    print(f"PAM peak-memory growth, 1×{args.channels}×S×S float32, {what}, median of runs")
    print(f"{'S':>5} {'N':>7} {'N×N f32':>9} {'blocked':>16} {'unblocked':>16} {'ratio':>7}")
    rows = []
    for size in args.sizes:
        n = size * size
        blocked = measure(size, args.channels, "blocked", args.train, args.runs)
        unblocked = measure(size, args.channels, "unblocked", args.train, args.runs)
        rows.append({"size": size, "blocked": blocked, "unblocked": unblocked})
        print(
            f"{size:>5} {n:>7} {n * n * 4 / GIB:>7.2f} G {fmt(blocked):>16} {fmt(unblocked):>16}"
            f" {ratio(unblocked, blocked):>7}"
        )
    if args.big:
        blocked = measure(224, args.channels, "blocked", args.train, 1)
        rows.append({"size": 224, "blocked": blocked, "unblocked": "not run"})
        n = 224 * 224
        print(
            f"{224:>5} {n:>7} {n * n * 4 / GIB:>7.2f} G {fmt(blocked):>16} "
            f"{'not run (>18 GiB)':>16}"
        )
    for row in rows:
        if row["size"] == 128 and not args.train and "growth_gib" in row["blocked"]:
            growth = row["blocked"]["growth_gib"]
            verdict = "PASS" if growth < 0.6 else "FAIL"
            print(f"target 128×128 blocked < 0.6 GiB: {growth:.3f} GiB {verdict}")
        if row["size"] == 224:
            done = "growth_gib" in row["blocked"]
            print(f"target 224×224 completes: {'PASS' if done else 'FAIL ' + str(row['blocked'])}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"channels": args.channels, "train": args.train, "rows": rows}, handle, indent=2
            )
    return 0


def fmt(result: dict) -> str:
    if "error" in result:
        return "error"
    return f"{result['growth_gib']:.3f} G {result['seconds']:.1f}s"


def ratio(a: dict, b: dict) -> str:
    if "growth_gib" not in a or "growth_gib" not in b or b["growth_gib"] <= 0:
        return "-"
    return f"{a['growth_gib'] / b['growth_gib']:.1f}×"


if __name__ == "__main__":
    sys.exit(main())
