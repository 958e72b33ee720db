"""``attnlab segment compare``: segmentation heads trained side by side under one recipe.

Every head (``fcn``, ``danet``, ``nl``, ``ccnet``, ``psa`` on one backbone) is trained with
every seed through the segmentation trainer's public entry point
(:func:`attnlab.engine.tasks.segment.main`) on the synthetic segmentation scenes, with the same
recipe; nothing is selected, every seed's final-epoch result counts. Then, per head:

- mIoU and pixel accuracy: mean, sample std and the 95 % Student-t interval over the seeds
  (:func:`attnlab.metrics.stats.mean_ci`);
- against the FCN baseline: the difference of mean mIoU (and pixel accuracy) with Welch's 95 %
  interval (:func:`attnlab.metrics.stats.diff_ci`); a difference whose interval contains 0 is
  reported as not distinguishable from noise;
- cost: parameters, MACs of one forward at the recipe's image size (FLOP counter, MACs =
  FLOPs / 2), mean training seconds per run, and peak inference memory: the most tensor
  storage alive at once during one eval forward of one image at that size
  (:func:`attnlab.bench.memory.peak_memory`; deterministic, weights not included).

Written to ``out``: ``results.json`` (every run and every head's statistics), ``results.md``
(the tables), and each run's own folder under ``runs/`` (the trainer's outputs). Both result
files are written atomically.

Example:
    >>> from attnlab.lab.segment_compare import DEFAULT_HEADS, QUICK_RECIPE
    >>> DEFAULT_HEADS, QUICK_RECIPE["epochs"]
    (('fcn', 'danet', 'nl', 'ccnet', 'psa'), 1)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..engine.files import atomic_write_text
from ..engine.tasks.segment import SegmentConfig, main
from ..registry import create_model
from .pool import default_jobs, run_parallel
from .summary import model_cost, seed_statistics, strict_json

DEFAULT_HEADS = ("fcn", "danet", "nl", "ccnet", "psa")
BASELINE = "fcn"
DEFAULT_SEEDS = (0, 1, 2)
# The default recipe is CPU-sized: 5 heads × 3 seeds, two one-thread runs at a time, fit 15
# minutes on 2 cores (benchmarks/segment_compare_budget.py prints the estimate from measured
# CPU time). Every run trains 12 epochs of 512 scenes of 32×32 (ResNet-20 backbone, output
# stride 4), batch 16, lr 0.05 (heads 10×, poly schedule). The scenes are "easy" ones (class
# glyphs alone, near-white on a dark plain background, nearly upright): on the "default"
# scenes (look-alike distractors, any rotation) a run of this size leaves FCN at 25-27 % mIoU
# with one class learned (predicting background everywhere: 16.9 %); on "easy" scenes every
# class is learned (background everywhere: 14.0 %). For the same CPU time, 512 scenes of 32×32
# teach FCN more than 256 of 48×48 (58 against 36 % mIoU at lr 0.03). The learning rate is
# chosen on FCN's seeds: 60.5 ± 3.0 % mIoU over 3 seeds at 0.05, 58.6 ± 6.7 % at 0.03, and
# 42 % (one seed) at the segmentation trainer's default 0.01.
DEFAULT_RECIPE: dict[str, Any] = {
    "backbone": "resnet20", "difficulty": "easy", "image_size": 32, "crop_size": 32,
    "train_size": 512, "val_size": 128, "epochs": 12, "batch_size": 16, "lr": 0.05,
}  # fmt: skip
QUICK_RECIPE: dict[str, Any] = {
    "backbone": "resnet20", "image_size": 32, "crop_size": 32, "train_size": 16,
    "val_size": 8, "epochs": 1, "batch_size": 8, "lr": 0.01,
}  # fmt: skip


def _check_heads(heads: Sequence[str], backbone: str) -> list[str]:
    from ..registry import list_models

    heads = list(heads)
    if not heads or len(set(heads)) != len(heads):
        raise ValueError(f"segment compare: heads must be distinct and non-empty, got {heads}")
    known = set(list_models(task="segmentation"))
    unknown = [h for h in heads if f"{h}_{backbone}" not in known]
    if unknown:
        raise ValueError(
            f"segment compare: no segmentation model "
            f"{', '.join(f'{h}_{backbone}' for h in unknown)}; heads: {', '.join(DEFAULT_HEADS)}"
        )
    if BASELINE not in heads:
        heads.insert(0, BASELINE)  # every head is compared with the FCN baseline
    return heads


def head_cost(head: str, recipe: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Parameters, MACs and peak inference tensor memory of ``{head}_{backbone}``."""
    model = create_model(f"{head}_{recipe['backbone']}", num_classes=num_classes).eval()
    return model_cost(model, recipe["image_size"], memory=True)


def summarise(runs: list[dict[str, Any]], heads: Sequence[str]) -> list[dict[str, Any]]:
    """Per-head statistics over seeds, each against the FCN baseline."""
    base = [r for r in runs if r["head"] == BASELINE]
    rows = []
    for head in heads:
        rs = [r for r in runs if r["head"] == head]
        miou, acc = [r["miou"] for r in rs], [r["pixel_accuracy"] for r in rs]
        is_base = head == BASELINE
        miou_stats = seed_statistics(miou, None if is_base else [r["miou"] for r in base])
        acc_stats = seed_statistics(acc, None if is_base else [r["pixel_accuracy"] for r in base])
        row = {
            "head": head,
            "seeds": [r["seed"] for r in rs],
            "mious": miou,
            "miou": miou_stats["mean"],
            "pixel_accuracy": acc_stats["mean"],
            "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs),
        }
        if not is_base:
            row["miou_vs_fcn"] = miou_stats["vs_reference"]
            row["acc_vs_fcn"] = acc_stats["vs_reference"]
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _delta(d: dict[str, Any] | None) -> tuple[str, str]:
    if d is None:
        return "—", "baseline"
    if math.isnan(d["lo"]):
        return f"{100 * d['diff']:+.1f}", "needs ≥ 2 seeds"
    text = f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
    if not d["distinguishable"]:
        return text, "not distinguishable from noise"
    return text, "better than FCN" if d["diff"] > 0 else "worse than FCN"


def markdown(rows: list[dict[str, Any]], costs: dict[str, dict], recipe: dict[str, Any]) -> str:
    """The results table and the cost table, with the recipe and the reading rule."""
    lines = [
        "# Segmentation heads compared",
        "",
        f"Recipe: {json.dumps(recipe)}; synthetic scenes; final epoch of every seed counts.",
        "Intervals are 95 %: Student t for a head's mean, Welch t for its difference from FCN.",
        "A difference whose interval contains 0 is not distinguishable from noise.",
        "",
        "| head | mIoU % (mean ± std) | 95 % CI | Δ mIoU vs FCN (95 % CI) | verdict "
        "| pixel acc % (mean ± std) | Δ pixel acc vs FCN (95 % CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, a = r["miou"], r["pixel_accuracy"]
        ci = "n/a (1 seed)" if math.isnan(m["lo"]) else f"[{_pct(m['lo'])}, {_pct(m['hi'])}]"
        delta, verdict = _delta(r.get("miou_vs_fcn"))
        acc_delta, acc_verdict = _delta(r.get("acc_vs_fcn"))
        acc_note = "" if r["head"] == BASELINE else f" ({acc_verdict})"
        lines.append(
            f"| {r['head']} | {_pct(m['mean'])} ± {_pct(m['std'])} | {ci} | {delta} | {verdict} "
            f"| {_pct(a['mean'])} ± {_pct(a['std'])} | {acc_delta}{acc_note} |"
        )
    size = recipe["image_size"]
    lines += [
        "",
        f"| head | params | MACs ({size}×{size}) | training s / run "
        f"| peak inference tensor memory ({size}×{size}) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        c = costs[r["head"]]
        lines.append(
            f"| {r['head']} | {c['params']:,} | {c['macs'] / 1e6:.1f} M | "
            f"{r['train_seconds']:.1f} | {c['peak_inference_bytes'] / 2**20:.1f} MiB |"
        )
    return "\n".join(lines) + "\n"


def run_head(job: dict[str, Any]) -> dict[str, Any]:
    """Trains one head with one seed (a job of :func:`compare_heads`, run in a worker process
    when runs are parallel).

    Args:
        job: ``{"head", "seed", "config": SegmentConfig fields, "threads": int or None}``.

    Returns:
        The run's row: head, seed, mIoU, pixel accuracy, parameters, training and wall seconds,
        and ``num_classes``.
    """
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    summary = main(SegmentConfig(**job["config"]))
    return {
        "head": job["head"], "seed": job["seed"], "miou": summary["miou"],
        "pixel_accuracy": summary["pixel_accuracy"], "params": summary["params"],
        "train_seconds": summary["epoch_time"] * summary["epochs"],
        "wall_seconds": time.perf_counter() - started, "num_classes": len(summary["iou"]),
    }  # fmt: skip


def compare_heads(
    heads: Sequence[str] = DEFAULT_HEADS,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    recipe: dict[str, Any] | None = None,
    out: str = "runs/segment-compare",
    device: str = "cpu",
    jobs: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Trains every head with every seed and writes the comparison.

    Args:
        heads: head names (the FCN baseline is added if missing).
        seeds: training seeds (the scenes are the same for every seed).
        recipe: overrides of :data:`DEFAULT_RECIPE` (``backbone`` and any
            :class:`~attnlab.engine.tasks.segment.SegmentConfig` field).
        out: output folder.
        device: where the runs train.
        jobs: runs at a time on the CPU, in worker processes of one thread each (default: one
            per CPU core, :func:`attnlab.lab.pool.default_jobs`); 1 runs them one after
            another in this process. Runs on another device go one at a time.
        log: called with one line per finished run; None for silence.

    Returns:
        ``{"recipe", "seeds", "jobs", "runs", "rows", "costs", "markdown"}``.
    """
    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"segment compare: seeds must be distinct and non-empty, got {seeds}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"segment compare: jobs must be >= 1, got {jobs}")
    heads = _check_heads(heads, recipe["backbone"])
    options = {k: v for k, v in recipe.items() if k != "backbone"}
    os.makedirs(out, exist_ok=True)
    total = len(heads) * len(seeds)
    parallel = (default_jobs(total) if jobs is None else min(jobs, total)) if device == "cpu" else 1
    work = [
        {
            "head": head,
            "seed": seed,
            "threads": 1 if parallel > 1 else None,
            "config": dict(
                model=f"{head}_{recipe['backbone']}",
                seed=seed,
                device=device,
                progress=False,
                out=os.path.join(out, "runs", f"{head}-seed{seed}"),
                overwrite=True,
                **options,
            ),
        }  # fmt: skip
        for head in heads
        for seed in seeds
    ]
    done = []

    def finished(index: int, run: dict[str, Any]) -> None:
        done.append(index)
        if log is not None:
            log(
                f"[{len(done)}/{total}] {run['head']} seed {run['seed']}: mIoU "
                f"{100 * run['miou']:.1f} pixel acc {100 * run['pixel_accuracy']:.1f} "
                f"({run['wall_seconds']:.0f} s)"
            )

    runs = run_parallel(run_head, work, parallel=parallel, on_result=finished)
    num_classes = runs[0]["num_classes"]
    for run in runs:
        del run["num_classes"]
    costs = {head: head_cost(head, recipe, num_classes) for head in heads}
    rows = summarise(runs, heads)
    text = markdown(rows, costs, recipe)
    result = {
        "recipe": recipe, "seeds": seeds, "jobs": parallel, "runs": runs, "rows": rows,
        "costs": costs,
    }  # fmt: skip
    atomic_write_text(
        os.path.join(out, "results.json"),
        json.dumps(strict_json(result), indent=2, allow_nan=False) + "\n",
    )
    atomic_write_text(os.path.join(out, "results.md"), text)
    return {**result, "markdown": text}
