"""``attnlab compare``'s numbers: per-variant statistics over seeds, differences from the
baseline with their confidence intervals, the plateau check, time-to-accuracy, and the
Markdown tables.

Accuracy per variant: mean, sample std and the 95 % Student-t interval of the seeds' final
validation accuracies (:func:`attnlab.metrics.stats.mean_ci`). Against the baseline: the
difference of means with Welch's 95 % interval (:func:`attnlab.metrics.stats.diff_ci`); a
difference whose interval contains 0 is reported as not distinguishable from noise.

Example:
    >>> from attnlab.lab.compare.report import plateau, time_to_accuracy
    >>> plateau([0.5, 0.7, 0.8, 0.81, 0.812, 0.815, 0.814, 0.815])["reached"]
    True
    >>> plateau([0.5, 0.6, 0.7, 0.75, 0.8, 0.84, 0.87, 0.9])["reached"]
    False
    >>> time_to_accuracy([0.3, 0.6, 0.9], [10.0, 11.0, 12.0], 0.55)
    (2, 21.0)
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ...metrics.stats import mean_ci
from ..summary import seed_statistics

PLATEAU_FRACTION = 0.25  # the last quarter of training …
PLATEAU_TOLERANCE = 0.01  # … changes validation accuracy by less than 1 point
TARGET_FRACTION = 0.9  # time-to-accuracy: 90 % of the baseline's final accuracy


def plateau(
    curve: list[float], fraction: float = PLATEAU_FRACTION, tolerance: float = PLATEAU_TOLERANCE
) -> dict[str, Any]:
    """Whether a validation-accuracy curve (one value per epoch) has levelled off.

    The window is the last ``fraction`` of the epochs (at least one epoch): the curve has
    reached its plateau when the accuracy at the end differs from the accuracy at the start of
    the window by less than ``tolerance``.

    Returns:
        ``{"from_epoch", "to_epoch", "change", "reached"}`` (epochs 1-based; ``from_epoch`` 0
        means before training, i.e. a one-epoch curve, which never counts as levelled off).
    """
    if not curve:
        raise ValueError("compare.plateau: expected a curve of at least one epoch, got none")
    if not 0.0 < fraction <= 1.0 or tolerance < 0:
        raise ValueError(
            f"compare.plateau: expected 0 < fraction <= 1 and tolerance >= 0, got "
            f"{fraction}, {tolerance}"
        )
    epochs = len(curve)
    window = max(1, math.ceil(fraction * epochs))
    start = epochs - window  # 1-based epoch whose accuracy opens the window
    if start < 1:
        return {"from_epoch": 0, "to_epoch": epochs, "change": math.nan, "reached": False}
    change = curve[-1] - curve[start - 1]
    return {"from_epoch": start, "to_epoch": epochs, "change": change,
            "reached": abs(change) < tolerance}  # fmt: skip


def time_to_accuracy(
    curve: list[float], epoch_seconds: list[float], target: float
) -> tuple[int | None, float | None]:
    """First epoch (1-based) whose validation accuracy reaches ``target``, and the training
    seconds up to the end of it; (None, None) when never reached."""
    elapsed = 0.0
    for epoch, (acc, seconds) in enumerate(zip(curve, epoch_seconds, strict=True), 1):
        elapsed += seconds
        if acc >= target:
            return epoch, elapsed
    return None, None


def _mean_curve(curves: list[list[float]]) -> tuple[list[float], list[float]]:
    length = min(len(c) for c in curves)
    columns = [[c[e] for c in curves] for e in range(length)]
    means = [statistics.fmean(col) for col in columns]
    stds = [statistics.stdev(col) if len(col) > 1 else 0.0 for col in columns]
    return means, stds


def aggregate(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per-variant rows (statistics, curves, plateau, robustness, time-to-accuracy) from the
    runs, and the target accuracy used for time-to-accuracy."""
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in variants}
    reference = "baseline" if "baseline" in by_variant else variants[0]
    ref_accs = [r["val_acc"] for r in by_variant[reference]]
    target = TARGET_FRACTION * statistics.fmean(ref_accs)
    rows = []
    for v, rs in by_variant.items():
        accs = [r["val_acc"] for r in rs]
        curves = [[h["val_acc"] for h in r["history"]] for r in rs]
        mean_curve, std_curve = _mean_curve(curves)
        reach = [
            time_to_accuracy(c, [h["time"] for h in r["history"]], target)
            for c, r in zip(curves, rs, strict=True)
        ]
        reached = [x for x in reach if x[0] is not None]
        acc = seed_statistics(accs, None if v == reference else ref_accs)
        row: dict[str, Any] = {
            "variant": v,
            "seeds": [r["seed"] for r in rs],
            "accs": accs,
            "acc": acc["mean"],
            "curve_mean": mean_curve,
            "curve_std": std_curve,
            "plateau": plateau(mean_curve),
            "epoch_time": statistics.fmean(r["epoch_time"] for r in rs),
            "to_target": {
                "reached": len(reached),
                "runs": len(rs),
                "epochs": statistics.fmean(x[0] for x in reached) if reached else None,
                "seconds": statistics.fmean(x[1] for x in reached) if reached else None,
            },
        }
        if acc["vs_reference"] is not None:
            row["vs_baseline"] = acc["vs_reference"]
        robust = [r["robust_acc"] for r in rs if r.get("robust_acc") is not None]
        if len(robust) == len(rs):
            ref_robust = [r["robust_acc"] for r in by_variant[reference]]
            robust_stats = seed_statistics(robust, None if v == reference else ref_robust)
            row["robust_accs"] = robust
            row["robust"] = robust_stats["mean"]
            row["drop"] = mean_ci([a - b for a, b in zip(accs, robust, strict=True)])
            if robust_stats["vs_reference"] is not None:
                row["robust_vs_baseline"] = robust_stats["vs_reference"]
        points = [r["pointing"] for r in rs if r.get("pointing") is not None]
        if len(points) == len(rs):
            row["pointings"] = points
            row["pointing"] = mean_ci(points)
            row["energy_mean"] = statistics.fmean(r["energy"] for r in rs)
        row["gallery"] = next((r["gallery"] for r in rs if r.get("gallery")), None)
        rows.append(row)
    return {"rows": rows, "reference": reference, "target_acc": target}


def _pct(x: float | None, digits: int = 1) -> str:
    return (
        "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"
    )


def _interval(ci: dict[str, Any]) -> str:
    if math.isnan(ci["lo"]):
        return "n/a (1 seed)"
    return f"[{_pct(ci['lo'])}, {_pct(ci['hi'])}]"


def verdict(diff: dict[str, Any] | None) -> str:
    """Plain words for a difference from the baseline."""
    if diff is None:
        return "reference"
    if math.isnan(diff["lo"]):
        return "needs ≥ 2 seeds"
    if not diff["distinguishable"]:
        return "not distinguishable from noise"
    return "better than baseline" if diff["diff"] > 0 else "worse than baseline"


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: accuracy with intervals, difference from the baseline, robustness, time to
    accuracy and localisation."""
    lines = [
        "| variant | val acc % (mean ± std) | 95 % CI | Δ vs baseline (95 % CI) | verdict "
        "| harder split % | drop (points) | to 90 % of baseline: epochs, s "
        "| pointing game (Grad-CAM) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc, diff = r["acc"], r.get("vs_baseline")
        delta = "—"
        if diff is not None:
            delta = f"{100 * diff['diff']:+.1f}"
            if not math.isnan(diff["lo"]):
                delta += f" [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}]"
        robust = drop = "n/a"
        if "robust" in r:
            robust = f"{_pct(r['robust']['mean'])} ± {_pct(r['robust']['std'])}"
            drop = f"{_pct(r['drop']['mean'])} ± {_pct(r['drop']['std'])}"
        t = r["to_target"]
        reach = "not reached"
        if t["reached"]:
            reach = f"{t['epochs']:.1f}, {t['seconds']:.0f} s"
            if t["reached"] < t["runs"]:
                reach += f" ({t['reached']}/{t['runs']} runs)"
        point = "n/a"
        if "pointing" in r:
            point = f"{_pct(r['pointing']['mean'])} ± {_pct(r['pointing']['std'])} %"
        lines.append(
            f"| {r['variant']} | {_pct(acc['mean'])} ± {_pct(acc['std'])} | {_interval(acc)} "
            f"| {delta} | {verdict(diff)} | {robust} | {drop} | {reach} | {point} |"
        )
    return "\n".join(lines)


def cost_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: parameters, MACs, training seconds per epoch, inference latency."""
    lines = [
        "| variant | params | MACs | s / epoch | latency (ms, batch 1) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M "
            f"| {r['epoch_time']:.1f} | {r['latency_ms']:.2f} |"
        )
    return "\n".join(lines)


def plateau_line(row: dict[str, Any]) -> str:
    """One sentence on whether ``row``'s mean curve levelled off."""
    p = row["plateau"]
    if p["from_epoch"] == 0:
        return f"{row['variant']}: one epoch, no plateau to check."
    state = "levelled off" if p["reached"] else "still changing"
    return (
        f"{row['variant']}: mean validation accuracy changed by {100 * p['change']:+.1f} points "
        f"from epoch {p['from_epoch']} to {p['to_epoch']} ({state}; plateau: < "
        f"{100 * PLATEAU_TOLERANCE:.0f} point over the last quarter)."
    )
