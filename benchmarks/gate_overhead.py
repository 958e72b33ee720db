"""What the gate modules cost inside a network, as same-run ratios against the plain network.

ResNet-50 with attention in every bottleneck vs the same ResNet-50 with attention off
(attn=None), CPU, 2 threads, batch 8, 160×160: a training step (forward, cross-entropy,
backward, SGD step) and an inference pass (eval, no grad). Targets: CBAM training ≤ 1.06×,
inference ≤ 1.03×; SE and ECA training ≤ 1.03×.

Each attention network is timed on up to three paths, in the same turns as the plain network:

- ``fast, fused``: the kernels (:mod:`attnlab.kernels`) with ``kernels.fuse(model)``, the
  block's addition and ReLU done in the gate's output pass (what a user pays);
- ``fast``: the kernels, the block adding and applying its ReLU itself as the plain network
  does (the attention's own cost: both sides have the same block tail);
- ``reference``: the modules' own PyTorch code.

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

MODES = ("train", "infer")


def interleaved(
    fns: dict[str, Callable[[], object]], turns: int, sync: Callable[[], object]
) -> dict[str, dict]:
    """Times the candidates in turns (one call each per turn, in order) after two warm-up calls.

    Returns per candidate its median time ``s`` and, against the first candidate, the median
    of the per-turn ratios ``ratio`` and their quartiles ``iqr``.
    """
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
    base = times[next(iter(fns))]
    out = {}
    for name, values in times.items():
        ratios = [t / t0 for t, t0 in zip(values, base, strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[name] = {
            "s": statistics.median(values),
            "ratio": statistics.median(ratios),
            "iqr": (q[0], q[2]),
        }
    return out


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


def paths_for(attn: str, device: str) -> dict[str, Path]:
    """The plain network and the attention network's distinct paths (see the module doc)."""
    fast = "fast" if device == "cuda" else "auto"
    paths = {"plain": Path(attnlab.create_model("resnet50").to(device), fast)}
    model = attnlab.create_model("resnet50", attn=attn).to(device)
    fused = copy.deepcopy(model)
    has_kernel = any(getattr(m, "kernel_spec", lambda: None)() for m in model.modules())
    if kernels.fuse(fused):
        paths["fast, fused"] = Path(fused, fast)
    if has_kernel:
        paths["fast"] = Path(model, fast)
    paths["reference"] = Path(copy.deepcopy(model), "reference")
    return paths


def network(attns, *, batch, size, turns, modes, device="cpu") -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for attn in attns:
        paths = paths_for(attn, device)
        result = {}
        for mode in modes:
            for p in paths.values():
                p.model.train(mode == "train")
            fns = {
                name: p.train_step(x, y) if mode == "train" else p.infer(x)
                for name, p in paths.items()
            }
            result[mode] = interleaved(fns, turns, sync)
        for name in list(paths)[1:]:
            row = {"attn": attn, "path": name}
            cells = []
            for mode in MODES:
                if mode not in result:
                    cells.append("— | —")
                    continue
                r, base = result[mode][name], result[mode]["plain"]
                row[mode] = {"plain_s": base["s"], **r}
                cells.append(
                    f"{1e3 * base['s']:.0f} → {1e3 * r['s']:.0f} ms | **{r['ratio']:.3f}×** "
                    f"({r['iqr'][0]:.2f}–{r['iqr'][1]:.2f})"
                )
            same_tail = "— | —"
            if name == "fast, fused" and "train" in result and "fast" in result["train"]:
                same_tail = " | ".join(
                    f"{result[m]['fast']['ratio']:.3f}×" if m in result else "—" for m in MODES
                )
            rows.append(row)
            print(f"| resnet50+{attn} | {name} | {' | '.join(cells)} | {same_tail} |", flush=True)
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
        "(targets: CBAM train ≤ 1.06×, infer ≤ 1.03×; SE, ECA train ≤ 1.03×). Last column: "
        "the 'fast' path's ratios (train | infer), both sides with the block's own tail.\n"
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
