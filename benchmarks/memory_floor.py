"""What one pass over a gate's tensor costs on this machine: the floor under the issue-5 ratios.

A gate must read its input at least once and write its output once, so it cannot cost less
than a copy of that tensor. ``gate_overhead.py`` divides by a copy that runs from cache (20
back-to-back calls, the strictest baseline); inside a network the tensor is rarely in cache.
This prints, for each ResNet-50 stage shape (batch 8, 160×160) and a 256 MB array: a copy and
a sum (one read) from cache and after other memory has flushed the cache, as medians of
several runs, and the memory bandwidth they imply. With ``--gates`` it also times a CBAM
forward (eval) after the same flush, for the same comparison, and bounds CBAM's training
forward+backward at the first stage (the issue's module target, ≤ 10× a cached copy) from
these figures:

- ``fixed``: forward+backward on an 8×256×2×2 map (everything but the passes' memory: Python,
  autograd, the small layers at the batch's size);
- ``strict floor``: fixed + x and g each read once from memory and y and dx written once (two
  flushed copies), as if every other pass found its data in cache;
- ``two re-reads``: fixed + the re-reads that the computation's order forces from memory when
  the data are not kept in cache, the spatial BatchNorm's batch statistics (forward) and the
  gates' gradients (backward) each needing the whole batch before the output or the input
  gradient can be written: x read twice and y written (forward), (g, x) read and then g read
  and dx written (backward) — three flushed sums and two flushed copies;
- ``measured``: the module as gate_overhead.py's module part times it (back-to-back calls).

    python benchmarks/memory_floor.py [--threads 2] [--runs 15] [--gates]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, flush=None, runs: int = 15) -> float:
    """Median seconds of fn(), each run after flush() when given."""
    fn()
    times = []
    for _ in range(runs):
        if flush is not None:
            flush()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--gates", action="store_true", help="also time CBAM after a flush")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    big = torch.randn(64 << 20)  # 256 MB: streams from memory whatever the cache
    big_out = torch.empty_like(big)
    copy_s = timed(lambda: big_out.copy_(big), runs=5)
    sum_s = timed(big.sum, runs=5)
    print(f"# {args.threads} threads, torch {torch.__version__}\n")
    print(f"memory bandwidth: copy {2 * big.nbytes / copy_s / 1e9:.1f} GB/s (read + write), "
          f"sum {big.nbytes / sum_s / 1e9:.1f} GB/s (read)\n")  # fmt: skip
    flush_buf = torch.empty(32 << 20)  # 128 MB written between runs: evicts the 32 MB L3

    def flush() -> None:
        flush_buf.fill_(1.0)

    header = "| shape | MB | copy, cached | copy, flushed | sum, cached | sum, flushed |"
    rows = ["|---|---|---|---|---|---|"]
    shapes = [(8, 256, 40, 40), (8, 512, 20, 20), (8, 1024, 10, 10), (8, 2048, 5, 5)]
    gates = []
    for shape in shapes:
        x = torch.randn(shape)
        out = torch.empty_like(x)
        copy = out.copy_
        t = [
            timed(lambda copy=copy, x=x: copy(x), runs=args.runs),
            timed(lambda copy=copy, x=x: copy(x), flush, runs=args.runs),
            timed(x.sum, runs=args.runs),
            timed(x.sum, flush, runs=args.runs),
        ]
        rows.append(
            f"| {'×'.join(map(str, shape))} | {x.nbytes / 1e6:.1f} | "
            + " | ".join(f"{1e3 * s:.3f} ms" for s in t)
            + " |"
        )
        if args.gates:
            import attnlab

            cbam = attnlab.create_attention("cbam", shape[1]).eval()
            with torch.no_grad():
                gate_s = timed(lambda cbam=cbam, x=x: cbam(x), flush, runs=args.runs)
            gates.append((shape, gate_s, t[1]))
    print(header)
    print("\n".join(rows))
    if gates:
        print("\n| shape | CBAM forward (eval), flushed | ÷ copy, flushed |\n|---|---|---|")
        for shape, g, c in gates:
            print(f"| {'×'.join(map(str, shape))} | {1e3 * g:.3f} ms | {g / c:.2f}× |")
        module_floor(args.runs, flush)


def module_floor(runs: int, flush) -> None:
    """CBAM's training forward+backward at 8×256×40×40 against the floors in the module doc."""
    import attnlab

    cbam = attnlab.create_attention("cbam", 256)

    def fwd_bwd(shape):
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)

        def run():
            x.grad = None
            cbam(x).backward(g)

        return run

    x = torch.randn(8, 256, 40, 40)
    out = torch.empty_like(x)
    copy_cached = timed(lambda: out.copy_(x), runs=runs)
    copy_flushed = timed(lambda: out.copy_(x), flush, runs=runs)
    sum_flushed = timed(x.sum, flush, runs=runs)
    fixed = timed(fwd_bwd((8, 256, 2, 2)), runs=runs)
    measured = timed(fwd_bwd(tuple(x.shape)), runs=runs)
    rows = {
        "fixed (8×256×2×2)": fixed,
        "strict floor": fixed + 2 * copy_flushed,
        "two re-reads": fixed + 3 * sum_flushed + 2 * copy_flushed,
        "measured": measured,
    }
    print(f"\nCBAM forward+backward (training) at 8×256×40×40 against a cached copy "
          f"({1e3 * copy_cached:.3f} ms; target ≤ 10×):\n")  # fmt: skip
    print("| | ms | ÷ copy, cached |\n|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {1e3 * s:.3f} | {s / copy_cached:.1f}× |")


if __name__ == "__main__":
    main()
