"""CPU time of ``attnlab segment compare``'s default recipe, per head, and the whole run it
implies.

Every head trains once (seed 0) with the default recipe, as a one-thread worker job of the
compare (:func:`attnlab.lab.segment_compare.run_head`), two at a time. Each run's CPU seconds
(user + system of its process, ``os.times`` of the finished children) are what the machine's
other load inflates least; the estimate of the whole default run is

    seeds × Σ_heads CPU seconds of one run / jobs

(the runs are independent and ``jobs`` of them share ``jobs`` cores), printed next to the load
average, which says how far the wall times are from a quiet machine's. ``--epochs N`` trains N
epochs instead and scales the CPU seconds by ``default epochs / N`` (per-epoch cost is constant:
same scenes, same steps per epoch).

Usage:
    python benchmarks/segment_compare_budget.py
    python benchmarks/segment_compare_budget.py --epochs 3 --heads fcn ccnet
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def timed_run(job: dict) -> dict:
    """One compare run in this (worker) process; adds the process's CPU seconds."""
    from attnlab.lab.segment_compare import run_head

    start = os.times()
    row = run_head(job)
    end = os.times()
    row["cpu_seconds"] = (end.user - start.user) + (end.system - start.system)
    return row


def main() -> None:
    from attnlab.lab.pool import run_parallel
    from attnlab.lab.segment_compare import DEFAULT_HEADS, DEFAULT_RECIPE, DEFAULT_SEEDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_HEADS))
    parser.add_argument("--epochs", type=int, default=DEFAULT_RECIPE["epochs"])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args()
    recipe = {k: v for k, v in DEFAULT_RECIPE.items() if k != "backbone"}
    recipe["epochs"] = args.epochs
    scale = DEFAULT_RECIPE["epochs"] / args.epochs
    with tempfile.TemporaryDirectory() as out:
        jobs = [
            {
                "head": head,
                "seed": 0,
                "threads": 1,
                "config": {
                    **recipe,
                    "model": f"{head}_{DEFAULT_RECIPE['backbone']}",
                    "seed": 0,
                    "device": "cpu",
                    "progress": False,
                    "save_every": 0,
                    "out": os.path.join(out, head),
                },
            }
            for head in args.heads
        ]
        print(f"before: {_load()}")
        started = time.perf_counter()
        rows = run_parallel(timed_run, jobs, parallel=args.jobs)
        wall = time.perf_counter() - started
        print(f"after:  {_load()}")
    print(f"default recipe {DEFAULT_RECIPE}, {args.epochs} epoch(s) measured, ×{scale:g}")
    print("| head | mIoU % (seed 0) | CPU s / run (default epochs) | wall s (measured) |")
    print("|---|---|---|---|")
    total = 0.0
    for row in rows:
        cpu = row["cpu_seconds"] * scale
        total += cpu
        miou, wall_run = 100 * row["miou"], row["wall_seconds"]
        print(f"| {row['head']} | {miou:.1f} | {cpu:.0f} | {wall_run:.0f} |")
    runs = len(DEFAULT_SEEDS) * total
    print(f"{len(rows)} runs in {wall:.0f} s wall; estimate of the default compare "
          f"({len(args.heads)} heads × {len(DEFAULT_SEEDS)} seeds, {args.jobs} at a time on "
          f"{args.jobs} free cores): {runs:.0f} CPU s / {args.jobs} = "
          f"{runs / args.jobs / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
