"""``attnlab compare``'s figures (matplotlib, imported lazily; None without it):
``results.png`` (accuracy with 95 % intervals on both splits, and seconds per epoch) and
``curves.png`` (validation accuracy per epoch, mean with a ± std band over seeds).

Example:
    >>> from attnlab.lab.compare.charts import write_curves
    >>> callable(write_curves)
    True
"""

from __future__ import annotations

from typing import Any


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_chart(rows: list[dict[str, Any]], path: str) -> str | None:
    """Accuracy (mean, 95 % interval) on the validation and harder splits; s / epoch."""
    plt = _pyplot()
    if plt is None:
        return None
    names = [r["variant"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.5 * len(rows)), 4))
    xs = list(range(len(rows)))
    robust = all("robust" in r for r in rows)
    width = 0.4 if robust else 0.8
    for offset, key, label, colour in (
        (0.0, "acc", "validation", "#4c72b0"),
        (width, "robust", "harder split", "#c44e52"),
    ):
        if key == "robust" and not robust:
            continue
        means = [100 * r[key]["mean"] for r in rows]
        errors = [
            [100 * (r[key]["mean"] - r[key]["lo"]) if r[key]["n"] > 1 else 0 for r in rows],
            [100 * (r[key]["hi"] - r[key]["mean"]) if r[key]["n"] > 1 else 0 for r in rows],
        ]
        left.bar([x + offset for x in xs], means, width, yerr=errors, capsize=3, color=colour,
                 label=label)  # fmt: skip
    left.set_xticks([x + (width / 2 if robust else 0) for x in xs], names, rotation=30)
    left.set_ylabel("accuracy (%)")
    left.set_title("accuracy, mean and 95 % interval over seeds")
    left.legend(loc="lower right")
    right.bar(names, [r["epoch_time"] for r in rows], color="#dd8452")
    right.set_ylabel("seconds per training epoch")
    right.set_title("training time")
    right.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_curves(rows: list[dict[str, Any]], path: str, target: float | None = None) -> str | None:
    """Validation accuracy per epoch for every variant: mean line, ± std band over seeds."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        mean = [100 * m for m in r["curve_mean"]]
        std = [100 * s for s in r["curve_std"]]
        epochs = list(range(1, len(mean) + 1))
        (line,) = axis.plot(epochs, mean, marker="o", markersize=3, label=r["variant"])
        axis.fill_between(epochs, [m - s for m, s in zip(mean, std, strict=True)],
                          [m + s for m, s in zip(mean, std, strict=True)],
                          color=line.get_color(), alpha=0.15)  # fmt: skip
    if target is not None:
        axis.axhline(100 * target, color="grey", linestyle=":", linewidth=1,
                     label="90 % of baseline")  # fmt: skip
    axis.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title("learning curves (mean ± std over seeds)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
