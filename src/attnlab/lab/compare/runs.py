"""One ``attnlab compare`` run (train one variant with one seed, then look at the result), and
running many of them, one after another or in parallel processes.

Each run trains through :func:`attnlab.engine.train.main`, then, on the trained model:
evaluates the harder split (robustness), scores the Grad-CAM pointing game on the probe
scenes (synthetic data) and, for a variant's first seed, draws its gallery. All of it happens
inside the run, so parallel processes parallelise the whole job.

Parallel runs use ``spawn``-started processes with ``threads`` intra-op threads each (default
one run per core, one thread each: a network as small as ResNet-20 on 32×32 images leaves
intra-op threads little work to share; ``benchmarks/compare_budget.py --mode parallel`` times
both ways on a machine). Results do not depend on the mode: every run is seeded on its own.
The workers end with their parent: interrupted, terminated or killed (:mod:`attnlab.lab.pool`).

Example:
    >>> from attnlab.lab.compare.runs import run_all
    >>> run_all([], parallel=1, threads=None)
    []
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..pool import run_parallel


def warm_up(variants: dict[str, dict[str, Any]], recipe: dict[str, Any]) -> float:
    """Builds every variant's model and runs one training step on a small random batch, so
    one-time work (compiling the fused CPU kernels, first-call allocations) happens before any
    run is timed. Returns the seconds it took."""
    import torch

    from ...registry import create_model

    started = time.perf_counter()
    size = recipe.get("image_size") or 32
    for options in variants.values():
        model = create_model(
            recipe.get("model", "resnet20"), num_classes=2, attn=options.get("attn"),
            attn_kwargs=options.get("attn_kwargs"), stage_attn=options.get("stage_attn"),
        )  # fmt: skip
        model(torch.rand(2, 3, size, size)).sum().backward()
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, size, size))
    return time.perf_counter() - started


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Trains one variant with one seed and looks at the trained model.

    Args:
        job: ``{"variant", "options", "seed", "recipe", "out", "robust": {"difficulty",
            "length"} or None, "probe": bool, "gallery": path or None, "threads": int or
            None}``.

    Returns:
        A JSON-ready row: variant, seed, the training summary, ``history`` (one dict per
        epoch), ``robust_acc`` (or None), ``pointing``/``energy``/``attn_pointing`` (or None)
        and ``gallery`` (file name or None).
    """
    import torch

    from ...engine.config import TrainConfig
    from ...engine.train import main as train
    from .probe import gallery, harder_accuracy, pointing

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    recipe, seed = job["recipe"], job["seed"]
    config = TrainConfig(**{**recipe, **job["options"], "seed": seed, "out": job["out"],
                            "progress": False, "save_every": 0})  # fmt: skip
    summary = json.loads(json.dumps(train(config), default=str))
    with open(os.path.join(job["out"], "metrics.jsonl")) as handle:
        history = [json.loads(line) for line in handle if line.strip()]
    row: dict[str, Any] = {"variant": job["variant"], "seed": seed, **summary, "history": history}
    row["robust_acc"] = None
    if job.get("robust"):
        row["robust_acc"] = harder_accuracy(summary, recipe, **job["robust"])
    row.update(pointing(summary, recipe) if job.get("probe") else {})
    row["gallery"] = None
    if job.get("gallery"):
        written = gallery(summary, recipe, job["gallery"])
        row["gallery"] = os.path.basename(written) if written else None
    return row


def run_all(
    jobs: list[dict[str, Any]], *, parallel: int, threads: int | None, log=print
) -> list[dict[str, Any]]:
    """Runs ``jobs`` (see :func:`run_one`), ``parallel`` at a time; rows in the jobs' order."""
    total = len(jobs)
    if parallel <= 1:
        rows = []
        for i, job in enumerate(jobs, 1):
            log(f"[{i}/{total}] {job['variant']} seed {job['seed']} …")
            rows.append(run_one({**job, "threads": threads}))
            _say(log, rows[-1])
        return rows
    log(f"{total} runs, {parallel} at a time, {threads or 1} thread(s) each …")
    done = []

    def finished(index: int, row: dict[str, Any]) -> None:
        done.append(index)
        log(f"[{len(done)}/{total}] {row['variant']} seed {row['seed']}")
        _say(log, row)

    jobs = [{**job, "threads": threads or 1} for job in jobs]
    return run_parallel(run_one, jobs, parallel=parallel, on_result=finished)


def _say(log, row: dict[str, Any]) -> None:
    robust = "" if row["robust_acc"] is None else f", harder split {row['robust_acc']:.4f}"
    log(f"    val acc {row['val_acc']:.4f}{robust}, {row['epoch_time']:.1f} s/epoch")
