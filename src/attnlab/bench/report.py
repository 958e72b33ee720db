"""The ``attnlab bench`` report: results.json, results.md (tables) and results.png (chart).

Example:
    >>> from attnlab.bench.report import format_markdown
    >>> format_markdown({}).startswith("# attnlab bench")
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any


def write_report(results: dict[str, Any], out_dir: str) -> dict[str, str | None]:
    """Writes ``results.json``, ``results.md`` and ``results.png`` to ``out_dir``.

    Returns:
        name → path; ``"png"`` is None without matplotlib (``pip install attnlab[viz]``) or
        without timings to plot.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str | None] = {
        k: os.path.join(out_dir, f"results.{k}") for k in ("json", "md")
    }
    with open(paths["json"], "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    with open(paths["md"], "w") as handle:
        handle.write(format_markdown(results))
    paths["png"] = write_chart(results, os.path.join(out_dir, "results.png"))
    return paths


def format_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: environment, conventions, one table per benchmark."""
    env = results.get("environment", {})
    lines = ["# attnlab bench", ""]
    if env:
        lines.append(
            f"Device: {env['device']} ({env['device_name']}), {env['threads']} threads; torch "
            f"{env['torch']}, attnlab {env['attnlab']}; gate backend {env['gate_backend']} "
            f"(CPU kernels: {env.get('fast_kernels', 'n/a')})."
        )
    lines.append(
        "\nColumns: **MACs** = multiply-accumulates of conv/linear/matmul/attention (the papers' "
        '"FLOPs"); **FLOPs** = 2 × MACs + pooling, elementwise gates, softmax and norms '
        "(conventions: `attnlab.bench.flops`); both per image. Times: median of round medians, "
        "whole batch; ratios (×): same run, candidates interleaved round by round. Peak: "
        "tensor memory allocated during the call."
    )
    for part, table in (("modules", _modules_table), ("models", _models_table)):
        if part in results:
            lines += ["", *table(results[part])]
    if "papers" in results:
        lines += ["", *_papers_table(results["papers"])]
    return "\n".join(lines) + "\n"


def _table(header: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; ``header`` is the column names joined by " | "."""
    lines = [f"| {header} |", "|" + "---|" * (header.count(" | ") + 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _modules_table(data: dict[str, Any]) -> list[str]:
    header = (
        "stage | C×H×W | module | params | MACs | FLOPs | fwd ms | ×ref | fwd+bwd ms | "
        "×ref | peak fwd MiB | peak fwd+bwd MiB | note"
    )
    cells = [
        [str(r["stage"]), "×".join(map(str, r["shape"][1:])), r["attention"]]
        + [_fmt(r.get(k), ",") for k in ("params", "macs", "flops")]
        + [_fmt(r.get(k), s) for k, s in (("fwd_ms", ".3f"), ("fwd_ratio", ".2f"))]
        + [_fmt(r.get(k), s) for k, s in (("fwdbwd_ms", ".3f"), ("fwdbwd_ratio", ".2f"))]
        + [_fmt(r.get(k), ".1f") for k in ("peak_fwd_mib", "peak_fwdbwd_mib")]
        + [r.get("note", "")]
        for r in data["rows"]
    ]
    title = (
        f"## Modules alone: batch {data['batch']}, ResNet-50 stage shapes for "
        f"{data['image_size']}×{data['image_size']} inputs, {data['repeats']} rounds"
    )
    ref = data["reference"]
    return [
        title,
        "",
        f"Reference: forward `{ref['fwd']}`, forward+backward `{ref['fwdbwd']}`.",
        "",
        *_table(header, cells),
    ]


def _models_table(data: dict[str, Any]) -> list[str]:
    header = (
        "variant | params | GMACs | GFLOPs | inference ms | ×base | train step ms | ×base | "
        "peak inference MiB | peak train MiB | ×base"
    )
    cells = [
        [r["variant"], f"{r['params']:,}", f"{r['macs'] / 1e9:.3f}", f"{r['flops'] / 1e9:.3f}"]
        + [f"{r['infer_ms']:.1f}", f"{r['infer_ratio']:.3f}"]
        + [f"{r['train_ms']:.1f}", f"{r['train_ratio']:.3f}"]
        + [f"{r['peak_infer_mib']:.1f}", f"{r['peak_train_mib']:.1f}"]
        + [f"{r['peak_train_ratio']:.2f}"]
        for r in data["rows"]
    ]
    title = (
        f"## {data['model']} with attention: batch {data['batch']}, "
        f"{data['image_size']}×{data['image_size']}, {data['repeats']} rounds"
    )
    return [
        title,
        "",
        *_table(header, cells),
        "",
        "Train step: zero grads, forward, cross-entropy, backward (no optimizer update).",
    ]


def _papers_table(data: dict[str, Any]) -> list[str]:
    header = (
        "model | variant | params | M (2^20) | paper M | GMACs (10^9) | GMACs (2^30) | "
        "paper G | paper units | source"
    )
    cells = [
        [r["model"], r["variant"], f"{r['params']:,}", f"{r['params_m_binary']:.2f}"]
        + [_fmt(r["paper_params_m"], ".2f"), f"{r['macs'] / 1e9:.3f}", f"{r['gmacs_binary']:.3f}"]
        + [_fmt(r["paper_gflops"], ".3f"), r.get("paper_units") or "", r["source"] or ""]
        for r in data["rows"]
    ]
    notes = [f"- {note}" for note in data["notes"]]
    notes += [f"- Source {key}: {text}." for key, text in data["sources"].items()]
    return ["## Published figures: 224×224, 1000 classes", "", *_table(header, cells), "", *notes]


def write_chart(results: dict[str, Any], path: str) -> str | None:
    """Same-run ratio bars (modules: log scale per stage; models: inference and training)."""
    panels = [
        (p, k)
        for p, keys in (
            ("modules", ("fwd_ratio", "fwdbwd_ratio")),
            ("models", ("infer_ratio", "train_ratio")),
        )
        if p in results
        for k in keys
    ]
    if not panels:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (part, key) in zip(axes[0], panels, strict=True):
        rows = [r for r in results[part]["rows"] if key in r]
        label = "attention" if part == "modules" else "variant"
        groups = sorted({r.get("stage", 0) for r in rows})
        names = list(dict.fromkeys(r[label] for r in rows))
        width = 0.8 / len(groups)
        for i, group in enumerate(groups):
            values = {r[label]: r[key] for r in rows if r.get("stage", 0) == group}
            xs = [j + i * width for j in range(len(names))]
            heights = [values.get(n, float("nan")) for n in names]
            axis.bar(xs, heights, width, label=f"stage {group}" if group else None)
        axis.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_yscale("log" if part == "modules" else "linear")
        versus = "reference" if part == "modules" else "baseline"
        axis.set_title(f"{part}: {key.replace('_ratio', '')} time ÷ {versus}")
        if len(groups) > 1:
            axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
