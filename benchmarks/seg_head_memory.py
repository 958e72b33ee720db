"""Peak memory of full-resolution inference for every segmentation head on one backbone.

One 1×3×1024×2048 image (Cityscapes size), eval mode, no grad, ResNet-50 dilated to output
stride 8, 19 classes. Each head runs in its own fresh child process, one after the other: the
child builds ``{head}_{backbone}``, warms up on a 64×64 image (first dispatches and allocator
pools not counted), resets the kernel's peak-RSS mark (/proc/self/clear_refs) and runs one
forward. Printed per head: the growth of the peak resident set over the resident set just
before the forward, the process's whole peak RSS (weights and libraries included), the
forward's wall time, and the verdict against the 6 GiB target (on the whole peak RSS).

Usage:
    python benchmarks/seg_head_memory.py                       # fcn danet nl ccnet psa (minutes)
    python benchmarks/seg_head_memory.py --heads nl ccnet --size 256 512   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GIB = 1024**3
HEADS = ("fcn", "danet", "nl", "ccnet", "psa")


def child(args: argparse.Namespace) -> dict:
    import torch

    import attnlab
    from attnlab.bench.memory import rss_growth

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = attnlab.create_model(f"{args.child}_{args.backbone}", num_classes=args.classes).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # warm-up
    x = torch.randn(1, 3, *args.size)

    def run() -> None:
        with torch.no_grad():
            model(x)

    start = time.perf_counter()
    rss = rss_growth(run)
    return {
        "rss_growth_bytes": rss["growth_bytes"],
        "rss_peak_bytes": rss["peak_bytes"],
        "seconds": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
    }


def measure(head: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", head, "--backbone", args.backbone,
           "--size", *map(str, args.size), "--classes", str(args.classes),
           "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"killed (exit {out.returncode})"]
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[1024, 2048])
    parser.add_argument("--classes", type=int, default=19, help="Cityscapes: 19")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--limit-gib", type=float, default=6.0, help="target on the peak RSS")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=HEADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    height, width = args.size
    print(
        f"{{head}}_{args.backbone}, 1×3×{height}×{width}, inference (eval, no grad), float32, "
        f"CPU, one child process per head"
    )
    print(f"{'head':<7} {'params':>11} {'RSS growth':>11} {'peak RSS':>10} {'time':>8}  target")
    results = {}
    for head in args.heads:
        r = measure(head, args)
        results[head] = r
        if "error" in r:
            print(f"{head:<7} error: {r['error']}")
            continue
        peak = r["rss_peak_bytes"] / GIB
        verdict = "PASS" if peak < args.limit_gib else "FAIL"
        print(
            f"{head:<7} {r['params']:>11,} {r['rss_growth_bytes'] / GIB:>9.3f} G "
            f"{peak:>8.3f} G {r['seconds']:>7.1f}s  < {args.limit_gib:g} GiB {verdict}",
            flush=True,
        )
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
