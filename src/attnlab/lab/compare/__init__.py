"""``attnlab compare``: attention variants trained side by side under one recipe, with
confidence intervals, learning curves, a robustness split, cost and localisation.

``compare(...)`` trains every variant with every seed (:mod:`.runs`; parallel processes by
default), then writes to the output folder:

- ``results.json``: every run (summary, per-epoch history, harder-split accuracy, pointing
  game) and every variant's statistics (:mod:`.report`);
- ``results.md``: the accuracy table (mean ± std, 95 % interval, difference from the baseline
  with Welch's 95 % interval and whether it is distinguishable from noise, harder-split
  accuracy and drop, time to 90 % of the baseline's accuracy, Grad-CAM pointing game), the
  cost table (parameters, MACs, s / epoch, latency) and the plateau check;
- ``results.png``, ``curves.png`` and one ``gallery-<variant>.png`` per variant (with
  matplotlib; :mod:`.charts`, :mod:`.probe`).

Nothing is selected: every seed's final-epoch accuracy counts.

Example:
    >>> from attnlab.lab.compare import DEFAULT_RECIPE, VARIANT_SETS
    >>> list(VARIANT_SETS["main"]), DEFAULT_RECIPE["difficulty"]
    (['baseline', 'se', 'cbam', 'eca', 'bam', 'ca'], 'medium')
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ...engine.files import atomic_write_text
from ..pool import default_jobs
from ..summary import model_cost, strict_json
from .charts import write_chart, write_curves
from .claims import check_claims, claims_table
from .report import TARGET_FRACTION, accuracy_table, aggregate, cost_table, plateau_line
from .runs import run_all, warm_up
from .variants import (
    DEFAULT_RECIPE,
    DEFAULT_SEEDS,
    GALLERY_IMAGES,
    HARDER,
    PROBE_SCENES,
    QUICK_RECIPE,
    QUICK_ROBUST_SCENES,
    QUICK_SEEDS,
    ROBUST_SCENES,
    VARIANT_SETS,
    variant_options,
)

__all__ = [
    "DEFAULT_RECIPE",
    "DEFAULT_SEEDS",
    "GALLERY_IMAGES",
    "PROBE_SCENES",
    "QUICK_RECIPE",
    "QUICK_ROBUST_SCENES",
    "QUICK_SEEDS",
    "ROBUST_SCENES",
    "VARIANT_SETS",
    "compare",
    "variant_options",
]


def compare(
    variants: dict[str, dict[str, Any]],
    *,
    recipe: dict[str, Any],
    seeds: list[int],
    out: str,
    jobs: int | None = None,
    threads: int | None = None,
    robust_scenes: int = ROBUST_SCENES,
    log=print,
) -> dict[str, Any]:
    """Trains every variant with every seed and writes the results.

    Args:
        variants: name → model options (``attn``, ``attn_kwargs``, ``stage_attn``).
        recipe: TrainConfig fields shared by every run (model, data, epochs, …).
        seeds: training seeds; each variant runs once per seed.
        out: output folder (created).
        jobs: runs at a time (default: one per CPU core,
            :func:`attnlab.lab.pool.default_jobs`); 1 runs them one after another in this
            process.
        threads: intra-op threads per run (default: 1 when parallel, torch's setting when not).
        robust_scenes: size of the harder split (synthetic data; 0: no robustness column).
        log: where progress lines go.

    Returns:
        The results dict written to ``results.json``.
    """
    from ...registry import create_model

    if not variants or not seeds:
        raise ValueError(f"compare: expected variants and seeds, got {variants!r}, {seeds!r}")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    setup_seconds = warm_up(variants, recipe)
    synthetic = recipe.get("data", "synthetic") == "synthetic"
    harder = HARDER.get(recipe.get("difficulty", "default")) if synthetic else None
    robust = {"difficulty": harder, "length": robust_scenes} if harder and robust_scenes else None
    jobs_list = [
        {
            "variant": name,
            "options": options,
            "seed": seed,
            "recipe": recipe,
            "out": os.path.join(out, _slug(name), f"seed{seed}"),
            "robust": robust,
            "probe": synthetic,
            "gallery": os.path.join(out, f"gallery-{_slug(name)}.png") if i == 0 else None,
        }  # fmt: skip
        for name, options in variants.items()
        for i, seed in enumerate(seeds)
    ]
    parallel = default_jobs(len(jobs_list)) if jobs is None else max(1, min(jobs, len(jobs_list)))
    train_started = time.perf_counter()
    runs = run_all(jobs_list, parallel=parallel, threads=threads, log=log)
    train_seconds = time.perf_counter() - train_started
    summary = aggregate(runs, list(variants))
    for row in summary["rows"]:
        first = next(r for r in runs if r["variant"] == row["variant"])
        model = create_model(**first["model_config"])
        size = first.get("image_size") or 32
        row["options"] = variants[row["variant"]]
        row.update(model_cost(model, size, latency=True))
    claims = check_claims(summary["rows"])
    results = {
        "recipe": recipe,
        "seeds": seeds,
        "jobs": parallel,
        "threads_per_run": threads or (1 if parallel > 1 else None),
        "harder_split": robust,
        "reference": summary["reference"],
        "target_acc": summary["target_acc"],
        "rows": summary["rows"],
        "runs": runs,
        "claims": claims,
        "setup_seconds": setup_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    # Strict JSON: an undefined statistic (one seed's std or interval) is written as null.
    text = json.dumps(strict_json(results), indent=2, default=str, allow_nan=False)
    atomic_write_text(os.path.join(out, "results.json"), text)
    tables = accuracy_table(summary["rows"]) + "\n\n" + cost_table(summary["rows"])
    if claims:
        tables += "\n\nClaims checked:\n\n" + claims_table(claims)
    charts = [
        write_chart(summary["rows"], os.path.join(out, "results.png")),
        write_curves(summary["rows"], os.path.join(out, "curves.png"), summary["target_acc"]),
    ]
    atomic_write_text(os.path.join(out, "results.md"), _markdown(results, tables))
    log("")
    log(tables)
    log("")
    for row in summary["rows"]:
        log(plateau_line(row))
    log(f"\n{len(runs)} runs in {results['total_seconds'] / 60:.1f} min "
        f"({setup_seconds:.1f} s set-up); results in {out}")  # fmt: skip
    if None in charts:
        log("(no charts or galleries: install attnlab[viz] for them)")
    return results


def _markdown(results: dict[str, Any], tables: str) -> str:
    recipe = ", ".join(f"{k}={v}" for k, v in results["recipe"].items())
    harder = results["harder_split"]
    robust = (
        f"Harder split: {harder['length']} scenes of difficulty {harder['difficulty']!r} from "
        "the generator's held-out test stream, evaluated with the same trained models; drop = "
        "validation minus harder-split accuracy, per seed. "
        if harder
        else "Harder split: n/a (synthetic data only). "
    )
    plateaus = "\n".join(f"- {plateau_line(r)}" for r in results["rows"])
    return (
        "# attnlab compare\n\n"
        f"Recipe: {recipe}; seeds {results['seeds']}; {results['jobs']} run(s) at a time. "
        f"Wall time {results['total_seconds'] / 60:.1f} min.\n\n{tables}\n\n"
        "Accuracy: final-epoch validation accuracy, mean ± sample std over seeds, with the "
        "95 % Student-t interval of the mean. Δ vs baseline: difference of means in points, "
        "Welch's 95 % interval; 'not distinguishable from noise' when it contains 0. "
        + robust
        + f"Time to accuracy: first epoch reaching {100 * TARGET_FRACTION:.0f} % of the "
        f"baseline's final mean accuracy ({100 * results['target_acc']:.1f} %), and the "
        "training seconds up to it, mean over the runs that reached it. Pointing game: share "
        "of the first "
        f"{PROBE_SCENES} validation scenes where the Grad-CAM map (last stage, true class) "
        "peaks on the target. "
        "MACs: one forward pass. s / epoch: mean training-epoch time (parallel runs share the "
        "cores). Latency: median forward time at batch 1, measured on this machine. "
        "Curves: curves.png; galleries: gallery-<variant>.png.\n\n"
        f"Plateau check:\n{plateaus}\n"
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")
