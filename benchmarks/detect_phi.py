"""YOLOv4-tiny with phi 0-4 (none, SE, CBAM, ECA, CA) trained with one recipe: one table.

The issue-8 acceptance: on the synthetic default data, a CPU training of a few minutes reaches
a clearly non-zero mAP@0.5, and the five ``phi`` settings are compared with the same recipe.
Recipe (the defaults below): synthetic scenes (default difficulty, 6 classes, 2 objects per
scene) at 128×128, 800 training and 200 validation scenes, 8 epochs, batch 16, AdamW lr 2e-3,
1-epoch warm-up then cosine, weight decay 5e-4, random scale/translate, flip and HSV jitter,
gradient clipping at 10, seed 0, 1 CPU thread (about 2-3 minutes per run on an idle core).
mAP is evaluated on the validation scenes (conf ≥ 0.01, NMS 0.5); "best" is the best epoch.

Each run writes its folder under ``--out`` (config.yaml, metrics.jsonl, last.pt, best.pt); the
table is printed as Markdown at the end and saved as ``<out>/results.md`` and ``results.json``.
One seed per setting: differences of a few points between phi values are within run-to-run
noise at this budget.

Usage:
    python benchmarks/detect_phi.py                         # phi 0-4, ~12-15 min
    python benchmarks/detect_phi.py --phi 0 --epochs 4      # one quick run
"""

from __future__ import annotations

import argparse
import json
import os
import time

from attnlab.engine.tasks.detect import DetectConfig, main

NAMES = {0: "none", 1: "SE", 2: "CBAM", 3: "ECA", 4: "CA"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phi", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=800)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/detect_phi")
    parser.add_argument("--progress", action="store_true", help="per-epoch lines")
    return parser.parse_args()


def table(rows: list[dict]) -> str:
    lines = [
        "| phi | attention | params | mAP@0.5 | best mAP@0.5 | mAP@[.5:.95] | s/epoch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phi']} | {r['attention']} | {r['params']:,} | {100 * r['map50']:.1f} | "
            f"{100 * r['best_map50']:.1f} | {100 * r['map']:.1f} | {r['epoch_time']:.1f} |"
        )
    return "\n".join(lines)


def main_cli() -> None:
    args = parse_args()
    rows = []
    for phi in args.phi:
        config = DetectConfig(
            phi=phi, input_size=args.input_size, train_size=args.train_size,
            val_size=args.val_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, threads=args.threads, progress=args.progress, save_every=0,
            out=os.path.join(args.out, f"phi{phi}"),
        )  # fmt: skip
        started = time.perf_counter()
        summary = main(config)
        row = {"phi": phi, "attention": NAMES[phi], "params": summary["params"],
               "map50": summary["map50"], "best_map50": summary["best_map50"],
               "map": summary["map"], "epoch_time": summary["epoch_time"],
               "total_s": time.perf_counter() - started}  # fmt: skip
        rows.append(row)
        print(
            f"phi {phi} ({NAMES[phi]}): mAP@0.5 {row['map50']:.4f}  mAP {row['map']:.4f}  "
            f"{row['epoch_time']:.1f} s/epoch  {row['total_s']:.0f} s total",
            flush=True,
        )
    recipe = (
        f"synthetic {args.input_size}×{args.input_size}, {args.train_size} train / "
        f"{args.val_size} val scenes, {args.epochs} epochs, batch {args.batch_size}, AdamW lr "
        f"{args.lr:g}, seed {args.seed}, {args.threads} thread(s)"
    )
    text = f"Recipe: {recipe}\n\n{table(rows)}"
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"recipe": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main_cli()
