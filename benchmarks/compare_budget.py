"""Wall time of ``attnlab compare`` and the way it uses the cores.

Three measurements, each printed with the machine's load average before and after (other
processes on the machine inflate every figure; ratios within one run are what to compare):

1. ``--mode parallel``: the same small set of runs (2 variants × 2 seeds, 1 epoch of the
   default recipe) done as two single-thread runs at a time (``jobs=2, threads=1``) and as one
   run at a time using two threads (``jobs=1, threads=2``); median of ``--repeats`` each, and
   the ratio serial / parallel (> 1: parallel processes are faster).
2. ``--mode quick``: the whole ``attnlab compare --quick`` (6 variants × 3 seeds).
3. ``--mode default``: the whole default ``attnlab compare`` (6 variants × 3 seeds), with the
   one-time set-up (kernel build) and the training part reported separately.

Usage:
    python benchmarks/compare_budget.py --mode parallel --repeats 3
    python benchmarks/compare_budget.py --mode quick
    python benchmarks/compare_budget.py --mode default
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _compare(variants, recipe, seeds, jobs, threads, robust):
    from attnlab.lab.compare import compare

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        results = compare(variants, recipe=recipe, seeds=seeds, out=out, jobs=jobs,
                          threads=threads, robust_scenes=robust, log=lambda *a: None)  # fmt: skip
        return time.perf_counter() - started, results


def parallel_vs_serial(repeats: int) -> None:
    from attnlab.lab.compare import DEFAULT_RECIPE, ROBUST_SCENES, variant_options

    variants = variant_options("main", ["baseline", "cbam"])
    recipe = {**DEFAULT_RECIPE, "epochs": 1}
    times: dict[str, list[float]] = {"2 runs × 1 thread": [], "1 run × 2 threads": []}
    _compare(variants, recipe, [0], 1, 2, 0)  # warm caches (kernel build, imports)
    for _ in range(repeats):
        for label, (jobs, threads) in (("2 runs × 1 thread", (2, 1)),
                                       ("1 run × 2 threads", (1, 2))):  # fmt: skip
            seconds, _ = _compare(variants, recipe, [0, 1], jobs, threads, ROBUST_SCENES)
            times[label].append(seconds)
    print(f"4 runs (baseline, cbam × 2 seeds), 1 epoch of the default recipe; {_load()}")
    for label, values in times.items():
        print(f"  {label}: median {statistics.median(values):.1f} s over {repeats} "
              f"({', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
    ratio = statistics.median(times["1 run × 2 threads"]) / statistics.median(
        times["2 runs × 1 thread"]
    )
    print(f"  serial / parallel = {ratio:.2f} (> 1: two single-thread runs at a time are faster)")


def whole(quick: bool) -> None:
    from attnlab.lab.compare import (
        DEFAULT_RECIPE,
        DEFAULT_SEEDS,
        QUICK_RECIPE,
        QUICK_ROBUST_SCENES,
        ROBUST_SCENES,
        variant_options,
    )

    recipe = {**DEFAULT_RECIPE, **(QUICK_RECIPE if quick else {})}
    robust = QUICK_ROBUST_SCENES if quick else ROBUST_SCENES
    print(f"before: {_load()}")
    seconds, results = _compare(variant_options("main"), recipe, list(range(DEFAULT_SEEDS)),
                                None, None, robust)  # fmt: skip
    name = "attnlab compare --quick" if quick else "attnlab compare"
    print(f"after: {_load()}")
    print(f"{name}: {seconds:.1f} s wall ({seconds / 60:.2f} min), of which set-up (kernel "
          f"build, one step per model) {results['setup_seconds']:.1f} s and training runs "
          f"{results['train_seconds']:.1f} s; {results['jobs']} runs at a time")  # fmt: skip
    for row in results["rows"]:
        acc = row["acc"]
        print(f"  {row['variant']}: {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} %, "
              f"{row['epoch_time']:.1f} s/epoch")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["parallel", "quick", "default"], default="parallel")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "parallel":
        parallel_vs_serial(args.repeats)
    else:
        whole(args.mode == "quick")


if __name__ == "__main__":
    main()
