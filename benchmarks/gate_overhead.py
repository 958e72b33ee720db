"""What the gate modules cost in time: the issue-5 targets, measured as same-run ratios.

1. Network: ResNet-50 with attention in every bottleneck vs the same ResNet-50 with attention
   off (attn=None), CPU, 2 threads, batch 8, 160×160: a training step (forward, cross-entropy,
   backward, SGD step) and an inference pass (eval, no grad). Targets: CBAM training ≤ 1.06×,
   inference ≤ 1.03×; SE and ECA training ≤ 1.03×.
2. Module: CBAM alone at 8×256×40×40 (stage-1 output in that setting): forward ≤ 3× and
   forward+backward ≤ 10× the time of ``x.clone()``. The forward is timed in training mode
   (without autograd: BatchNorm on batch statistics, running statistics updated) and in eval
   mode (inference); forward+backward in training mode.

Each comparison calls its candidates in turns: the network part one training step (or inference
pass) of each per turn, --rounds × --number turns; the module part 20 back-to-back calls of
each per turn (their median), --rounds turns, so that x.clone() runs from cache, at its fastest.
A time is the median over the turns, a ratio the median over the turns of the two sides' ratio
in the same turn, so drift and bursts of load (other tenants) hit both sides alike. By default
glibc is told to keep freed memory (--malloc steady; see steady_malloc), so neither side pays
this VM's page faults for memory it re-touches; --malloc default measures glibc as it is.
Both the fast path and the reference path are measured (``attnlab.layers.fused.backend``); the
network's fast path twice: as the ResNet blocks run it (``fused.residual_relu``: the block's
tail relu(attn(out) + shortcut) done by the gate's output pass, and at inference the block's
last BatchNorm by the gate's first pass, which pools its output), and with the block running
its last BatchNorm, addition and ReLU itself ("fast, own tail"), as the network without
attention does.
Nothing is cached between iterations: every call runs the full computation on the same input.

Usage:
    python benchmarks/gate_overhead.py                      # everything (several minutes)
    python benchmarks/gate_overhead.py --part module        # the CBAM module only
    python benchmarks/gate_overhead.py --part network --attn cbam --rounds 7
    python benchmarks/gate_overhead.py --part network --paths fast   # the default path only
    python benchmarks/gate_overhead.py --part network --modes infer  # inference only
    python benchmarks/gate_overhead.py --channels-last      # both sides in channels-last
    python benchmarks/gate_overhead.py --malloc default     # glibc's default (page faults)
    python benchmarks/gate_overhead.py --device cuda        # on a GPU: the Triton kernels
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import attnlab
from attnlab.layers import fused


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    number: int,
    *,
    block: bool = False,
    sync: Callable[[], object] = lambda: None,
) -> dict:
    """Times the candidates in turns: ``rounds × number`` turns of one call each (A B A B …),
    or with ``block`` ``rounds`` turns of ``number`` back-to-back calls each (their median).

    Returns ``{name: median seconds}`` plus ``{name + "/": median ratio}``: the median over the
    turns of that candidate's time divided by the first candidate's time in the same turn, so
    drift and bursts of load hit both sides of a ratio alike; ``{name + "/iqr": (q1, q3)}``,
    the quartiles of those turn ratios, tell how far one turn's ratio strays. ``block`` is for
    sub-millisecond calls: back-to-back calls find their data in cache as a loop over a layer
    does, and the ``x.clone()`` reference is then at its fastest (a strict baseline).
    ``sync`` waits for the device (``torch.cuda.synchronize`` on CUDA) before a call's time is
    taken and before the next starts.
    """
    for fn in fns.values():  # warm-up
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds if block else rounds * number):
        for name, fn in fns.items():
            calls = []
            for _ in range(number if block else 1):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                calls.append(time.perf_counter() - start)
            times[name].append(statistics.median(calls))
    first = next(iter(fns))
    out = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        ratios = [t / t0 for t, t0 in zip(values, times[first], strict=True)]
        out[name + "/"] = statistics.median(ratios)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[name + "/iqr"] = (quartiles[0], quartiles[2])
    return out


def steady_malloc() -> bool:
    """Tells glibc to keep freed memory (no heap trimming, no mmap for blocks up to 32 MiB).

    By default glibc hands large freed blocks back to the system, and the next tensor of that
    size faults its pages in again (each 4 KiB page zeroed by the kernel, ~2 µs apiece on this
    VM): a training step of ResNet-50 here takes 0 to 50,000 such faults, at random, which
    moves a step by ±30 % and a ``x.clone()`` of a 13 MB map by 3×. With this, both sides of
    every ratio run on memory already mapped. Returns False where it cannot (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(
            libc.mallopt(m_mmap_threshold, 32 << 20)
        )
    except (OSError, AttributeError):
        return False


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--malloc", choices=["steady", "default"], default="steady",
        help="steady: glibc keeps freed memory (see steady_malloc); default: glibc as it is",
    )  # fmt: skip


def apply_malloc(choice: str) -> str:
    """Applies --malloc; returns what is in force, for the report."""
    if choice == "steady" and not steady_malloc():
        return "default (mallopt unavailable)"
    return choice


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """--threads, --channels-last and --malloc, for the scripts that time the fused path inside
    ResNet-50 (gate_in_network.py, norm_fold.py)."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    add_malloc_option(parser)


def prepare_network_run(args: argparse.Namespace) -> tuple[str, torch.memory_format]:
    """Applies add_network_options' options and requires the fused kernels; returns the malloc
    in force and the memory format."""
    malloc = apply_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    if not fused.available():
        raise SystemExit(f"fused kernels unavailable: {fused.build_error()}")
    return malloc, torch.channels_last if args.channels_last else torch.contiguous_format


OWN_TAIL = "fast, own tail"
PATHS = ("fast", OWN_TAIL, "reference")
MODES = ("train", "infer")


@contextlib.contextmanager
def own_tail(on: bool):
    """With ``on``, the blocks apply their last BatchNorm, add the shortcut and apply the ReLU
    themselves, as the network without attention does, instead of the gate's call doing it
    (``fused.residual_relu``: the norm at inference, the tail always): the gate's cost alone,
    for comparison."""
    saved = fused.residual_relu
    if on:
        fused.residual_relu = lambda attn, x, shortcut, norm=None: None
    try:
        yield
    finally:
        fused.residual_relu = saved


def network(
    attns, *, batch, size, rounds, number, channels_last, paths=PATHS, modes=MODES, device="cpu"
):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size).to(device)
    y = torch.randint(0, 1000, (batch,)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = _sync(device)

    def model(attn):
        m = attnlab.create_model("resnet50", attn=attn).to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    def train_step(m, opt, phases):
        def step():
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            forward = time.perf_counter()
            loss.backward()
            backward = time.perf_counter()
            opt.step()
            phases.append((forward - start, backward - forward, time.perf_counter() - backward))

        return step

    def infer(m):
        def run():
            with torch.no_grad():
                m(x)

        return run

    rows, phase_lines = [], []
    nan = float("nan")
    skipped = {"base": nan, "attn": nan, "attn/": nan, "attn/iqr": (nan, nan)}  # a mode not run
    base = model(None)
    for attn in attns:
        m = model(attn)
        for path in paths:
            with fused.backend(path.split(",")[0]), own_tail(path == OWN_TAIL):
                m.train(), base.train()
                opts = [torch.optim.SGD(n.parameters(), lr=1e-4, momentum=0.9) for n in (base, m)]
                train, split = skipped, None
                if "train" in modes:
                    phases = {"base": [], "attn": []}
                    train = interleaved(
                        {
                            "base": train_step(base, opts[0], phases["base"]),
                            "attn": train_step(m, opts[1], phases["attn"]),
                        },
                        rounds, number, sync=sync,
                    )  # fmt: skip
                    split = phase_split(phases["base"], phases["attn"])
                m.eval(), base.eval()
                inf = skipped
                if "infer" in modes:
                    inf = interleaved(
                        {"base": infer(base), "attn": infer(m)}, rounds, number, sync=sync
                    )
            row = {
                "attn": attn, "path": path,
                "train_base_s": train["base"], "train_attn_s": train["attn"],
                "train_ratio": train["attn/"], "train_ratio_iqr": train["attn/iqr"],
                "infer_base_s": inf["base"], "infer_attn_s": inf["attn"],
                "infer_ratio": inf["attn/"], "infer_ratio_iqr": inf["attn/iqr"],
            }  # fmt: skip
            if split is not None:
                row["train_phases"] = split
                phase_lines.append(
                    f"| resnet50+{attn} | {path} | "
                    + " | ".join(_phase_cell(split[name]) for name in PHASES)
                    + " |"
                )
            rows.append(row)
            print(
                f"| resnet50+{attn} | {path} | {_cell(row, 'train')} | {_cell(row, 'infer')} |",
                flush=True,
            )
    if phase_lines:
        print(
            "\nThe training step's phases (medians over the same turns; in brackets the median "
            "of the turns' differences, attention − base, and that as a share of the base "
            "step):\n\n| model | path | forward (+ loss) | backward | optimizer step |"
            "\n|---|---|---|---|---|"
        )
        print("\n".join(phase_lines), flush=True)
    return rows


PHASES = ("forward", "backward", "optimizer")


def phase_split(base: list[tuple], attn: list[tuple], warmup: int = 2) -> dict:
    """Per phase of a training step (forward with the loss, backward, optimizer step): each
    side's median and the median of the turns' differences (attention − base), in seconds, and
    that difference over the base step's median. ``base`` and ``attn`` hold one (forward,
    backward, optimizer) triple per call, in turns; the first ``warmup`` calls of each side
    (interleaved's warm-up) are left out."""
    base, attn = base[warmup:], attn[warmup:]
    if not base or len(base) != len(attn):
        raise ValueError(f"phase_split: {len(base)} base and {len(attn)} attention calls")
    step = statistics.median(sum(t) for t in base)
    out = {}
    for i, name in enumerate(PHASES):
        diff = statistics.median(a[i] - b[i] for b, a in zip(base, attn, strict=True))
        out[name] = {
            "base_s": statistics.median(t[i] for t in base),
            "attn_s": statistics.median(t[i] for t in attn),
            "diff_s": diff,
            "diff_share": diff / step,
        }
    return out


def _phase_cell(p: dict) -> str:
    return (
        f"{1e3 * p['base_s']:.1f} → {1e3 * p['attn_s']:.1f} ms "
        f"({1e3 * p['diff_s']:+.1f} ms, {100 * p['diff_share']:+.1f} %)"
    )


def _cell(row: dict, mode: str) -> str:
    """A mode's two table cells (times, ratio with its quartiles), or dashes if not timed."""
    if math.isnan(row[f"{mode}_ratio"]):
        return "— | —"
    q1, q3 = row[f"{mode}_ratio_iqr"]
    return (
        f"{1e3 * row[f'{mode}_base_s']:.0f} → {1e3 * row[f'{mode}_attn_s']:.0f} ms | "
        f"**{row[f'{mode}_ratio']:.3f}×** ({q1:.2f}–{q3:.2f})"
    )


def module(names, *, shape, rounds, number, channels_last, device="cpu"):
    """Forward in training mode (no grad: batch statistics, running-statistics update) and in
    eval mode (inference), and forward+backward in training mode, each against x.clone()."""
    torch.manual_seed(0)
    x = torch.randn(shape).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    rows = []
    for name in names:
        m = attnlab.create_attention(name, shape[1]).to(device)
        m_eval = copy.deepcopy(m).eval()
        xr = x.clone().requires_grad_()

        def fwd(m=m):
            with torch.no_grad():
                m(x)

        def fwd_eval(m=m_eval):
            with torch.no_grad():
                m(x)

        def fwd_bwd(m=m, xr=xr):
            xr.grad = None
            m(xr).backward(g)

        for path in ("fast", "reference"):
            with fused.backend(path):
                t = interleaved(
                    {"clone": lambda: x.clone(), "fwd": fwd, "fwd-eval": fwd_eval,
                     "fwd+bwd": fwd_bwd},
                    rounds, number, block=True, sync=_sync(device),
                )  # fmt: skip
            row = {
                "module": name, "path": path, "clone_s": t["clone"], "fwd_s": t["fwd"],
                "fwd_eval_s": t["fwd-eval"], "fwd_bwd_s": t["fwd+bwd"], "fwd_ratio": t["fwd/"],
                "fwd_eval_ratio": t["fwd-eval/"], "fwd_bwd_ratio": t["fwd+bwd/"],
            }  # fmt: skip
            rows.append(row)
            print(
                f"| {name} | {path} | {1e3 * t['clone']:.2f} ms | {1e3 * t['fwd']:.2f} ms "
                f"(**{row['fwd_ratio']:.1f}×**) | {1e3 * t['fwd-eval']:.2f} ms "
                f"(**{row['fwd_eval_ratio']:.1f}×**) | {1e3 * t['fwd+bwd']:.2f} ms "
                f"(**{row['fwd_bwd_ratio']:.1f}×**) |",
                flush=True,
            )
    return rows


def _sync(device: str) -> Callable[[], object]:
    return torch.cuda.synchronize if device == "cuda" else lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "network", "module"], default="all")
    parser.add_argument("--attn", nargs="+", default=["cbam", "se", "eca"])
    parser.add_argument("--modules", nargs="+", default=["cbam", "se", "eca", "ca", "bam"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=3, help="calls per round (network)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="network paths to time"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="network modes to time"
    )
    add_malloc_option(parser)
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu",
        help="cuda: the fast path is the Triton kernels (attnlab.layers.triton_gates)",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    malloc = apply_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        probe = torch.zeros(1, 1, 1, 1, device="cuda")
        if not fused.use_fast(probe):
            print(f"note: Triton kernels unavailable ({fused._triton_error()}); fast = reference")
        machine = torch.cuda.get_device_name()
        if OWN_TAIL in args.paths:  # (no fused tail on CUDA: it would time the fast path again)
            print(f"note: no fused block tail on CUDA; path {OWN_TAIL!r} left out")
            args.paths = [p for p in args.paths if p != OWN_TAIL]
    else:
        if not fused.available():
            print(f"note: fused kernels unavailable ({fused.build_error()}); fast = reference")
        machine = f"{platform.processor() or platform.machine()}, {args.threads} threads"
    layout = "channels-last" if args.channels_last else "NCHW"
    print(
        f"# {machine}, torch {torch.__version__}, {layout}, malloc {malloc}, medians over "
        f"turns of {args.rounds}×20 (module), {args.rounds}×{args.number} (network)\n"
    )
    out = {}
    if args.part in ("all", "module"):
        shape = (args.batch, 256, args.size // 4, args.size // 4)
        print(f"Module alone at {'×'.join(map(str, shape))} vs x.clone() (targets: CBAM "
              "fwd ≤ 3×, fwd+bwd ≤ 10×)\n")  # fmt: skip
        print(
            "| module | path | clone | forward (train mode) | forward (eval) | forward + backward "
            "|\n|---|---|---|---|---|---|"
        )
        out["module"] = module(
            args.modules, shape=shape, rounds=args.rounds, number=20,
            channels_last=args.channels_last, device=args.device,
        )  # fmt: skip
        print()
    if args.part in ("all", "network"):
        print(
            f"ResNet-50, batch {args.batch}, {args.size}×{args.size}, attention vs attention off "
            "(targets: CBAM train ≤ 1.06×, infer ≤ 1.03×; SE, ECA train ≤ 1.03×)\n"
        )
        print(
            "| model | path | train step | ratio (quartiles of the turns) | inference | ratio "
            "(quartiles) |\n|---|---|---|---|---|---|"
        )
        out["network"] = network(
            args.attn, batch=args.batch, size=args.size, rounds=args.rounds,
            number=args.number, channels_last=args.channels_last, paths=args.paths,
            modes=args.modes, device=args.device,
        )  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
