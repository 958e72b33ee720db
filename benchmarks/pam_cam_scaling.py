"""How DANet's attention scales with the map: PAM blocked (attnlab) vs unblocked, and CAM.

For each map size S (input 1×C×S×S, float32, CPU; N = S·S positions) it measures, in one
interleaved run per size (``attnlab.bench.compare_latency``):

- **PAM, blocked**: ``attnlab.layers.PositionAttention`` as shipped (queries in blocks, the
  N×N matrix never built whole; maps with N² ≤ 4M scores, up to 45×45, run its plain
  formulation, marked "plain" in the table);
- **PAM, unblocked**: the paper's / authors' formulation written out below with plain torch
  ops — softmax(QᵀK) as one B×N×N matrix, then V·attentionᵀ — using the same Q/K/V convs
  (weights copied from the attnlab module); its output is checked against attnlab's blocked
  kernel (forced to 8 blocks) at the smallest size (max |Δ| ≤ 1e-4, else exit code 1);
- **CAM**: ``attnlab.layers.ChannelAttention`` (C×C affinities, linear in N).

Forward time is the median of ``--runs`` rounds (one call each, after a warm-up call); peak
memory is tensor memory allocated during one call (``attnlab.bench.peak_memory``: storages
created while it runs, freed ones subtracted — not the process's resident set, which
``benchmarks/pam_memory.py`` measures). Forward runs without grad; ``--train`` measures
forward+backward instead (input requiring grad, a fixed random output gradient).
Unblocked sizes whose N×N matrices would exceed ``--max-gib`` are skipped and say so.

A full run (S = 32 … 224) takes many minutes on 2 cores (blocked PAM at 224×224 is ~1.5·10^12
MACs per forward): run it on a quiet machine.

Usage:
    python benchmarks/pam_cam_scaling.py                       # S = 32 … 224, forward
    python benchmarks/pam_cam_scaling.py --sizes 32 64 --runs 3
    python benchmarks/pam_cam_scaling.py --train --sizes 32 64 96 --json scaling.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from torch import nn

from attnlab.bench import compare_latency, peak_memory
from attnlab.layers import ChannelAttention, PositionAttention

GIB, MIB = 2**30, 2**20
TOLERANCE = 1e-4


class UnblockedPAM(nn.Module):
    """Position attention as in the DANet paper and code: one N×N attention matrix."""

    def __init__(self, pam: PositionAttention) -> None:
        super().__init__()
        self.query = copy.deepcopy(pam.query)
        self.key = copy.deepcopy(pam.key)
        self.value = copy.deepcopy(pam.value)
        self.gamma = nn.Parameter(pam.gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B×N×d
        k = self.key(x).flatten(2)  # B×d×N
        v = self.value(x).flatten(2)  # B×C×N
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # B×N×N, softmax over keys
        out = torch.bmm(v, attention.transpose(1, 2))  # B×C×N
        return x + self.gamma * out.view(batch, channels, height, width)


def pam_block_rows(pam: PositionAttention, size: int) -> int:
    """Queries per block attnlab picks (N or more: it runs the plain formulation)."""
    return pam.block_size or max(1, pam.max_block_elements // (size * size))


def unblocked_bytes(size: int, train: bool) -> int:
    """The N×N float32 matrices alive at once: scores and probabilities (+ their gradients)."""
    n = size * size
    return (4 if train else 2) * n * n * 4


def make_call(module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None):
    if grad is None:

        def forward() -> None:
            with torch.no_grad():
                module(x)

        return forward

    def forward_backward() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    return forward_backward


def measure(size: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    pam = PositionAttention(args.channels)
    with torch.no_grad():
        pam.gamma.fill_(0.5)  # γ starts at 0 (identity); make the attention term count
    unblocked = UnblockedPAM(pam)
    cam = ChannelAttention(args.channels)
    with torch.no_grad():
        cam.gamma.fill_(0.5)
    x = torch.randn(1, args.channels, size, size, requires_grad=args.train)
    grad = torch.randn_like(x) if args.train else None
    need = unblocked_bytes(size, args.train)
    candidates = {"pam_blocked": make_call(pam, x, grad)}
    if need <= args.max_gib * GIB:
        candidates["pam_unblocked"] = make_call(unblocked, x, grad)
    candidates["cam"] = make_call(cam, x, grad)
    row: dict = {"size": size, "n": size * size, "nxn_gib": size**4 * 4 / GIB}
    row["attnlab_path"] = "blocked" if pam_block_rows(pam, size) < size * size else "plain"
    if size == min(args.sizes):
        # attnlab runs small maps unblocked itself: force its blocked kernel for the check.
        forced = copy.deepcopy(pam)
        forced.block_size = max(1, size * size // 8)
        with torch.no_grad():
            row["max_abs_diff"] = (forced(x) - unblocked(x)).abs().max().item()
    timing = compare_latency(candidates, warmup=1, repeats=args.runs, number=1)
    for name in ("pam_blocked", "pam_unblocked", "cam"):
        if name in candidates:
            row[name] = {
                "ms": 1e3 * timing["seconds"][name],
                "peak_mib": peak_memory(candidates[name]) / MIB,
            }
        else:
            row[name] = {"skipped": f"skipped (needs {need / GIB:.1f} GiB)"}
    if "pam_unblocked" in candidates:
        row["unblocked_over_blocked"] = timing["ratios"]["pam_unblocked"]
    return row


def cell(result: dict) -> str:
    if "skipped" in result:
        return result["skipped"]
    return f"{result['ms']:.1f} ms, {result['peak_mib']:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128, 160, 192, 224])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (median; >= 3)")
    parser.add_argument("--train", action="store_true", help="forward + backward")
    parser.add_argument("--max-gib", type=float, default=4.0, help="unblocked PAM size limit")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    what = "forward+backward" if args.train else "forward, no grad"
    print(
        f"DANet attention, 1×{args.channels}×S×S float32, {what}; {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; median of {args.runs} interleaved rounds; "
        "peak = tensor memory allocated during the call\n"
    )
    print("| S | N | N×N f32 | PAM blocked | PAM unblocked | unblocked ÷ blocked | CAM |")
    print("|---|---|---|---|---|---|---|")
    rows, ok = [], True
    for size in sorted(args.sizes):
        row = measure(size, args)
        rows.append(row)
        ratio = row.get("unblocked_over_blocked")
        print(
            f"| {size} | {row['n']} | {row['nxn_gib']:.2f} GiB "
            f"| {cell(row['pam_blocked'])} ({row['attnlab_path']}) "
            f"| {cell(row['pam_unblocked'])} | {'–' if ratio is None else f'{ratio:.2f}×'} "
            f"| {cell(row['cam'])} |",
            flush=True,
        )
    first = rows[0]
    if "max_abs_diff" in first:
        ok = first["max_abs_diff"] <= TOLERANCE
        print(
            f"\nblocked vs unblocked PAM at S={first['size']}: max |Δ| = "
            f"{first['max_abs_diff']:.2e} (tolerance {TOLERANCE:g}): {'OK' if ok else 'FAIL'}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            settings = {k: v for k, v in vars(args).items() if k != "json"}
            json.dump({"settings": settings, "rows": rows}, handle, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
