"""What the gate modules cost inside a network, as same-run ratios against the plain network.

ResNet-50 with attention in every bottleneck vs the same ResNet-50 with attention off
(attn=None), CPU, 2 threads, batch 8, 160×160: a training step (forward, cross-entropy,
backward, SGD step) and an inference pass (eval, no grad). Targets: CBAM training ≤ 1.06×,
inference ≤ 1.03×; SE and ECA training ≤ 1.03×.

Each attention network is timed on up to three paths, in the same turns as the plain network
(``plain``) and the plain network given ``kernels.fuse`` too (``plain, fused``: each block's
last BatchNorm, addition and ReLU in one pass):

- ``fast, fused``: the kernels (:mod:`attnlab.kernels`) with ``kernels.fuse(model)`` (what a
  user of ``fuse`` pays). SE and ECA blocks fold their last BatchNorm into the gate's passes
  and do the addition and ReLU in its output pass; CBAM blocks do the addition and ReLU in
  the gate's output pass;
- ``fast``: CBAM's own forward on the kernels, the block applying its norm, addition and ReLU
  itself as the plain network does;
- ``reference``: the modules' own PyTorch code.

The "same tail" columns give what the attention itself costs, both networks with the same
block tail: ``fast, fused`` against ``plain, fused`` where the norm is folded (SE, ECA), else
``fast`` against ``plain`` (CBAM).
A path that runs the same code as another for a module (no kernel path, nothing fused) is left
out. Every turn calls each candidate once (plain first), ``--rounds × --number`` turns; a time
is the median over the turns, a ratio the median over the turns of the two sides' ratio in the
same turn, so drift and bursts of load hit both sides alike; quartiles of the turn ratios in
brackets. By default glibc keeps freed memory (``--malloc steady``), so neither side pays page
faults for memory it re-touches.

Usage:
    python benchmarks/gate_overhead.py                              # CBAM, SE, ECA (minutes)
    python benchmarks/gate_overhead.py --attn cbam --rounds 7
    python benchmarks/gate_overhead.py --modes infer
    python benchmarks/gate_overhead.py --device cuda                # needs ATTNLAB_BACKEND=fast
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import attnlab
from attnlab import kernels
from attnlab.layers import CBAM, SpatialGate

MODES = ("train", "infer")


def interleaved(
    fns: dict[str, Callable[[], object]], turns: int, sync: Callable[[], object]
) -> dict[str, list[float]]:
    """Times the candidates in turns (one call each per turn, in order) after two warm-up calls;
    returns each candidate's times, turn by turn."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(turns):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired(values: list[float], base: list[float]) -> dict:
    """The median time ``s`` of ``values`` and, against ``base`` timed in the same turns, the
    median of the per-turn ratios ``ratio`` and their quartiles ``iqr``."""
    ratios = [t / t0 for t, t0 in zip(values, base, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"s": statistics.median(values), "ratio": statistics.median(ratios), "iqr": (q[0], q[2])}


def steady_malloc() -> bool:
    """Tells glibc to keep freed memory (no trimming; mmap only above 32 MiB), so repeated steps
    reuse mapped pages instead of faulting fresh ones in. False where it cannot (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, 1 << 30)) and bool(libc.mallopt(-3, 32 << 20))
    except (OSError, AttributeError):
        return False


class Path:
    """A candidate: a model and the backend it runs under."""

    def __init__(self, model: torch.nn.Module, backend: str) -> None:
        self.model, self.backend = model, backend
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            with kernels.backend(self.backend):
                self.opt.zero_grad(set_to_none=True)
                F.cross_entropy(self.model(x), y).backward()
                self.opt.step()

        return step

    def infer(self, x: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            with kernels.backend(self.backend), torch.no_grad():
                self.model(x)

        return run


def paths_for(attn: str, device: str) -> tuple[dict[str, Path], str | None]:
    """The candidates (see the module doc) and how the ``fast, fused`` path's same-tail ratio
    is taken: against ``plain, fused``, or ``"fast"``: the ``fast`` path against ``plain``
    (None where nothing is fused)."""
    fast = "fast" if device == "cuda" else "auto"
    plain = attnlab.create_model("resnet50").to(device)
    paths = {"plain": Path(plain, fast)}
    plain_fused = copy.deepcopy(plain)
    if kernels.fuse(plain_fused):
        paths["plain, fused"] = Path(plain_fused, fast)
    model = attnlab.create_model("resnet50", attn=attn).to(device)
    probe = torch.randn(1, 8, 4, 4, device=device)
    # modules whose own forward takes the kernels (CBAM, its spatial gate); channel gates
    # (SE, ECA) take them only inside a fused block
    own = any(
        isinstance(m, (CBAM, SpatialGate)) and kernels.enabled(probe, m) for m in model.modules()
    )
    fused = copy.deepcopy(model)
    if kernels.fuse(fused):
        paths["fast, fused"] = Path(fused, fast)
    if own:
        paths["fast"] = Path(model, fast)
    paths["reference"] = Path(copy.deepcopy(model), "reference")
    if "fast, fused" not in paths:
        return paths, None
    # a block whose norm is folded is compared with the plain network's folded blocks; a CBAM
    # block, whose norm runs as itself, through the "fast" path against the plain network
    return paths, "plain, fused" if not own and "plain, fused" in paths else "fast"


def network(attns, *, batch, size, turns, modes, device="cpu") -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for attn in attns:
        paths, tail_base = paths_for(attn, device)
        times = {}
        for mode in modes:
            for p in paths.values():
                p.model.train(mode == "train")
            fns = {
                name: p.train_step(x, y) if mode == "train" else p.infer(x)
                for name, p in paths.items()
            }
            times[mode] = interleaved(fns, turns, sync)
        for name in paths:
            if name.startswith("plain"):
                continue
            row = {"attn": attn, "path": name}
            cells, tails = [], []
            for mode in MODES:
                if mode not in times:
                    cells.append("— | —")
                    tails.append("—")
                    continue
                t = times[mode]
                r = paired(t[name], t["plain"])
                row[mode] = {"plain_s": statistics.median(t["plain"]), **r}
                cells.append(
                    f"{1e3 * row[mode]['plain_s']:.0f} → {1e3 * r['s']:.0f} ms | "
                    f"**{r['ratio']:.3f}×** ({r['iqr'][0]:.2f}–{r['iqr'][1]:.2f})"
                )
                if name == "fast, fused":
                    # CBAM: its fast path against the plain network, both with their own tail
                    same = paired(t["fast"], t["plain"]) if tail_base == "fast" else None
                    same = same or (paired(t[name], t[tail_base]) if tail_base else None)
                    row[mode]["same_tail"] = same and same["ratio"]
                    tails.append(f"{same['ratio']:.3f}×" if same else "—")
                else:
                    tails.append("—")
            rows.append(row)
            print(f"| resnet50+{attn} | {name} | {' | '.join(cells)} | {' | '.join(tails)} |",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn", nargs="+", default=["cbam", "se", "eca"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=3, help="turns per round")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--malloc", choices=["steady", "default"], default="steady")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    malloc = "steady" if args.malloc == "steady" and steady_malloc() else "default"
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        machine = torch.cuda.get_device_name()
    else:
        if not kernels.available():
            print(f"note: CPU kernels unavailable ({kernels.build_error()}); fast = reference")
        machine = f"{platform.processor() or platform.machine()}, {args.threads} threads"
    turns = args.rounds * args.number
    print(
        f"# {machine}, torch {torch.__version__}, malloc {malloc}, medians over {turns} turns\n"
        f"\nResNet-50, batch {args.batch}, {args.size}×{args.size}, attention vs attention off "
        "(targets: CBAM train ≤ 1.06×, infer ≤ 1.03×; SE, ECA train ≤ 1.03×). Last columns: "
        "'fast, fused' against the plain network with the same block tail (train | infer).\n"
    )
    print(
        "| model | path | train step | ratio vs plain (quartiles) | inference | ratio vs plain "
        "(quartiles) | same tail: train | infer |\n|---|---|---|---|---|---|---|---|"
    )
    rows = network(
        args.attn, batch=args.batch, size=args.size, turns=turns, modes=args.modes,
        device=args.device,
    )  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
