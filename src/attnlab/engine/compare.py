"""Train attention variants side by side under one recipe and report accuracy, cost, variance.

``compare(...)`` runs every variant with every seed through :func:`attnlab.engine.train.main`,
measures each variant's parameters, MACs and inference latency, and writes ``results.json``,
``results.md`` and ``results.png`` (matplotlib, if installed) to the output folder. Results are
reported as measured: mean ± sample standard deviation over seeds, nothing selected.

It also looks at what the trained models attend to: on synthetic data, the Grad-CAM pointing
game (last stage, true class; :mod:`attnlab.metrics.localization`) on the first
:data:`PROBE_SCENES` validation scenes, for every run ("n/a" on other data); and, with
matplotlib, one ``gallery-<variant>.png`` per variant (first seed's model, the first
:data:`GALLERY_IMAGES` validation images: input, Grad-CAM and the last attention module of each
stage; :mod:`attnlab.viz`).

Example:
    >>> from attnlab.engine.compare import VARIANT_SETS
    >>> list(VARIANT_SETS["main"])
    ['baseline', 'se', 'cbam', 'eca', 'bam', 'ca']
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

# Each variant is a set of model options on top of the shared recipe.
VARIANT_SETS: dict[str, dict[str, dict[str, Any]]] = {
    "main": {
        "baseline": {},
        "se": {"attn": "se"},
        "cbam": {"attn": "cbam"},
        "eca": {"attn": "eca"},
        "bam": {"stage_attn": "bam"},
        "ca": {"attn": "ca"},
    },
    # The ablations of the CBAM paper (Tables 1-3) and the seeds' "CBAM ≈ SE when shallow".
    "cbam": {
        "baseline": {},
        "se": {"attn": "se"},
        "cbam k=7": {"attn": "cbam"},
        "cbam k=3": {"attn": "cbam", "attn_kwargs": {"kernel_size": 3}},
        "cbam spatial→channel": {"attn": "cbam", "attn_kwargs": {"order": "spatial-channel"}},
        "cbam parallel": {"attn": "cbam", "attn_kwargs": {"order": "parallel"}},
        "cbam pool avg": {"attn": "cbam", "attn_kwargs": {"pool_types": ["avg"]}},
        "cbam pool max": {"attn": "cbam", "attn_kwargs": {"pool_types": ["max"]}},
    },
}

# The default recipe: sized so the six main variants × 2 seeds fit in 10 minutes on 2 cores.
DEFAULT_RECIPE: dict[str, Any] = {
    "model": "resnet20",
    "data": "synthetic",
    "epochs": 6,
    "train_size": 4000,
    "val_size": 1000,
    "batch_size": 128,
    "lr": 0.1,
}
QUICK_RECIPE: dict[str, Any] = {"epochs": 1, "train_size": 256, "val_size": 256, "batch_size": 64}
# The inspection after training: a few seconds in all (Grad-CAM on 64 scenes is ~0.1 s a run).
PROBE_SCENES = 64
GALLERY_IMAGES = 5


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(
    variants: dict[str, dict[str, Any]],
    *,
    recipe: dict[str, Any],
    seeds: list[int],
    out: str,
    log=print,
) -> dict[str, Any]:
    """Trains every variant with every seed and writes the results.

    Args:
        variants: name → model options (``attn``, ``attn_kwargs``, ``stage_attn``).
        recipe: TrainConfig fields shared by every run (model, data, epochs, …).
        seeds: training seeds; each variant runs once per seed.
        out: output folder (created).
        log: where progress lines go.

    Returns:
        The results dict written to ``results.json``.
    """
    from ..bench import count_macs, count_params, measure_latency
    from ..registry import create_model
    from .config import TrainConfig
    from .train import main as train

    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    rows, runs = [], []
    probe: dict[str, Any] | None = None
    inspect_seconds = 0.0
    total = len(variants) * len(seeds)
    for name, options in variants.items():
        summaries = []
        for seed in seeds:
            run_dir = os.path.join(out, _slug(name), f"seed{seed}")
            config = TrainConfig(**{**recipe, **options, "seed": seed, "out": run_dir,
                                    "progress": False})  # fmt: skip
            log(f"[{len(runs) + 1}/{total}] {name} seed {seed} …")
            summary = train(config)
            summaries.append(summary)
            runs.append({"variant": name, "seed": seed, **_plain(summary)})
            log(f"    val acc {summary['val_acc']:.4f}, {summary['epoch_time']:.1f} s/epoch")
        model = create_model(**summaries[0]["model_config"])
        size = summaries[0].get("image_size") or 32
        tick = time.perf_counter()
        probe = probe or _probe(recipe, summaries[0])
        looked = _inspect(summaries, probe, os.path.join(out, f"gallery-{_slug(name)}.png"))
        inspect_seconds += time.perf_counter() - tick
        acc_mean, acc_std = _mean_std([s["val_acc"] for s in summaries])
        rows.append(
            {
                "variant": name,
                "options": options,
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "accs": [s["val_acc"] for s in summaries],
                "params": count_params(model),
                "macs": count_macs(model, (1, 3, size, size)),
                "epoch_time": statistics.fmean(s["epoch_time"] for s in summaries),
                "latency_ms": 1e3 * measure_latency(model, (1, 3, size, size)),
                **looked,
            }
        )
    results = {
        "recipe": recipe,
        "seeds": seeds,
        "rows": rows,
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
        "inspect_seconds": inspect_seconds,
    }
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    table = format_table(rows)
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(_markdown(results, table))
    chart = write_chart(rows, os.path.join(out, "results.png"))
    log("")
    log(table)
    log(f"\n{len(runs)} runs in {results['total_seconds'] / 60:.1f} min; results in {out}")
    if chart is None:
        log("(no results.png or galleries: install attnlab[viz] for the charts)")
    return results


def _probe(recipe: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The fixed images every variant is looked at with: the first validation scenes with their
    masks (synthetic data), or the first validation images (other data), in [0, 1] or as the
    dataset normalises them (``normalised``)."""
    import torch

    if recipe.get("data", "synthetic") == "synthetic":
        from ..data.synthetic import SyntheticScenes

        scenes = SyntheticScenes(
            split="val", length=PROBE_SCENES, size=summary.get("image_size") or 32,
            num_classes=summary["model_config"]["num_classes"],
            difficulty=recipe.get("difficulty", "default"), seed=recipe.get("data_seed", 0),
        )  # fmt: skip
        items = [scenes.scene(i) for i in range(len(scenes))]
        return {
            "images": torch.stack([s.image for s in items]),  # n×3×S×S in [0, 1]
            "labels": torch.tensor([s.label for s in items]),
            "masks": torch.stack([s.mask == s.label + 1 for s in items]),  # the target object
            "normalised": False,
        }
    from ..data import build_datasets

    _, val, _ = build_datasets(
        recipe["data"], data_dir=recipe.get("data_dir"), image_size=recipe.get("image_size"),
        augment=False,
    )  # fmt: skip
    items = [val[i] for i in range(min(GALLERY_IMAGES, len(val)))]
    return {
        "images": torch.stack([image for image, _ in items]),
        "labels": torch.tensor([int(label) for _, label in items]),
        "masks": None,
        "normalised": True,
    }


def _inspect(summaries: list[dict[str, Any]], probe: dict[str, Any], gallery: str) -> dict:
    """Grad-CAM pointing game of every run (when the probe has masks) and the gallery of the
    first run's model (when matplotlib is installed)."""
    import torch

    from ..metrics import localization_score
    from .checkpoint import load_model

    pointings, energies, attention = [], [], []
    written = None
    for i, summary in enumerate(summaries):
        model, checkpoint = load_model(summary["checkpoint"])
        info = checkpoint.get("data_info") or {}
        mean, std = info.get("mean"), info.get("std")
        images = probe["images"]
        if not probe["normalised"] and mean and std:
            mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
            images = (images - mean) / std
        if probe["masks"] is not None:
            batch = [(images, probe["labels"], probe["masks"])]
            score = localization_score(model, batch)
            pointings.append(score["gradcam"]["pointing"])
            energies.append(score["gradcam"]["energy"])
            if score["attention"] is not None:
                attention.append(score["attention"]["pointing"])
        if i == 0:
            written = _gallery(model, images[:GALLERY_IMAGES], probe["labels"], info, gallery)
    looked: dict[str, Any] = {"pointing_mean": None, "pointing_std": None, "pointings": None,
                              "energy_mean": None, "attn_pointing_mean": None}  # fmt: skip
    if pointings:
        looked["pointing_mean"], looked["pointing_std"] = _mean_std(pointings)
        looked["pointings"] = pointings
        looked["energy_mean"] = statistics.fmean(energies)
        looked["attn_pointing_mean"] = statistics.fmean(attention) if attention else None
    looked["gallery"] = os.path.basename(written) if written else None
    return looked


def _gallery(model, images, labels, info: dict[str, Any], path: str) -> str | None:
    """The model's gallery (input, Grad-CAM, last attention module per stage); None without
    matplotlib."""
    from ..viz.plots import model_columns, require_matplotlib, save_gallery

    try:
        require_matplotlib()
    except ImportError:
        return None
    classes = info.get("classes")
    columns, _ = model_columns(model, images, class_names=classes)
    rows = [
        f"true {classes[int(t)]}" if classes else f"true {int(t)}" for t in labels[: len(images)]
    ]
    return save_gallery(images, columns, path, mean=info.get("mean"), std=info.get("std"),
                        row_labels=rows, cell=1.4, dpi=80)  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the aggregated rows."""
    lines = [
        "| variant | val acc (mean ± std) | params | MACs | s / epoch | latency (ms, batch 1) "
        "| pointing game (Grad-CAM) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pointing = "n/a"
        if r.get("pointing_mean") is not None:
            pointing = f"{100 * r['pointing_mean']:.1f} ± {100 * r['pointing_std']:.1f} %"
        lines.append(
            f"| {r['variant']} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} % "
            f"| {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['epoch_time']:.1f} "
            f"| {r['latency_ms']:.2f} | {pointing} |"
        )
    return "\n".join(lines)


def write_chart(rows: list[dict[str, Any]], path: str) -> str | None:
    """Bar chart of accuracy (± std) and seconds per epoch; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [r["variant"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(rows)), 4))
    left.bar(names, [100 * r["acc_mean"] for r in rows], yerr=[100 * r["acc_std"] for r in rows],
             capsize=4, color="#4c72b0")  # fmt: skip
    left.set_ylabel("validation accuracy (%)")
    left.set_title("accuracy, mean ± std over seeds")
    right.bar(names, [r["epoch_time"] for r in rows], color="#dd8452")
    right.set_ylabel("seconds per training epoch")
    right.set_title("training time")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(results: dict[str, Any], table: str) -> str:
    recipe = ", ".join(f"{k}={v}" for k, v in results["recipe"].items())
    return (
        "# attnlab compare\n\n"
        f"Recipe: {recipe}; seeds {results['seeds']}.\n\n{table}\n\n"
        "Accuracy: final-epoch validation accuracy, mean ± sample std over seeds. MACs: "
        "multiply-accumulates of one forward pass (conv/linear/matmul, torch FlopCounterMode). "
        "s / epoch: mean training-epoch time. Latency: median forward time at batch 1, "
        "measured on this machine. Pointing game: share of the first "
        f"{PROBE_SCENES} synthetic validation scenes where the Grad-CAM map (last stage, true "
        "class) peaks on the target object, mean ± std over seeds (n/a: data without masks). "
        "Galleries: gallery-<variant>.png.\n"
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    """JSON-serialisable copy of a run summary."""
    return json.loads(json.dumps(summary, default=str))
