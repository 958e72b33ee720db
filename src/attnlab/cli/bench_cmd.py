"""``attnlab bench``: what attention costs — MACs, FLOPs, time and memory — on this machine.

``attnlab bench`` (= ``all``) runs three benchmarks and writes ``results.json``,
``results.md`` and ``results.png`` to ``runs/bench-<timestamp>/``:

- ``modules``: every attention module alone at the four ResNet-50 stage shapes, forward and
  forward+backward, against a module-free reference of the same shape;
- ``models``: ResNet-50 without attention and with SE, CBAM, ECA, BAM and CA, inference and
  training step, interleaved in one run;
- ``papers``: our parameters and MACs next to the papers' published figures.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..registry import list_classifiers

DEFAULT_ATTNS = ("se", "cbam", "eca", "bam", "ca")
WHAT = ("modules", "models", "papers", "all")
# Batch 2 and 64×64 inputs: the smallest where every module trains (BatchNorm in training
# needs more than one value per channel; ResNet-50's last stage is then 2×2).
QUICK = {"batch": 2, "image_size": 64, "repeats": 2, "warmup": 1, "round_seconds": 0.005}
DEFAULTS = {"batch": 8, "image_size": 224, "repeats": 5, "warmup": 2, "round_seconds": 0.1}


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="measure what attention costs: MACs, FLOPs, time, peak memory",
        description=(
            "Measures attention modules alone (modules), networks with attention (models) "
            "and lists our parameter/MAC counts next to the papers' (papers). Times are "
            "medians of repeated rounds with candidates interleaved round by round; ratios "
            "are taken within one run. Writes results.json, results.md and results.png and "
            "prints the tables. A full run takes minutes: run it on a quiet machine."
        ),
    )
    parser.add_argument(
        "what",
        nargs="?",
        choices=WHAT,
        default="all",
        help="which benchmark (default: all)",
    )
    parser.add_argument(
        "--model",
        default="resnet50",
        metavar="NAME",
        help=f"network for 'models' (default resnet50): {', '.join(list_classifiers())}, "
        "or tv:<name> / timm:<name>",
    )
    parser.add_argument(
        "--attn",
        nargs="+",
        metavar="NAME",
        help="attention modules (default: se cbam eca bam ca for 'models', every registered "
        "module for 'modules'); BAM goes after stages, the others inside every block",
    )
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        choices=[1, 2, 3, 4],
        default=[1, 2, 3, 4],
        metavar="N",
        help="ResNet-50 stage shapes for 'modules' (default: 1 2 3 4)",
    )
    parser.add_argument("--batch", type=int, help=f"batch size (default {DEFAULTS['batch']})")
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"input size; module shapes are ResNet-50's stages for it "
        f"(default {DEFAULTS['image_size']})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda if available, else cpu",
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's current setting)"
    )
    parser.add_argument(
        "--repeats", type=int, help=f"timed rounds per measurement (default {DEFAULTS['repeats']})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in seconds: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + " (explicit flags win)",
    )
    parser.add_argument("--out", help="output folder (default runs/bench-<timestamp>)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import papers, report, runner
    from ..cli import UsageError
    from ..registry import check_model_name, list_attention

    settings = {**DEFAULTS, **(QUICK if args.quick else {})}
    for key in ("batch", "image_size", "repeats"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} must be >= 1, got {value}")
            settings[key] = value
    try:
        check_model_name(args.model)
    except (ValueError, ImportError) as err:
        raise UsageError(f"--model: {err}") from None
    known = list_attention()
    unknown = [name for name in args.attn or () if name not in known]
    if unknown:
        raise UsageError(f"unknown attention {', '.join(unknown)}; valid: {', '.join(known)}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = args.out or time.strftime("runs/bench-%Y%m%d-%H%M%S")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    common = {**settings, "device": device}
    results = {"settings": {"what": args.what, "quick": args.quick, **common}}
    common["log"] = log
    if args.what in ("modules", "all"):
        results["modules"] = runner.bench_modules(args.attn, stages=args.stages, **common)
    if args.what in ("models", "all"):
        attns = args.attn or DEFAULT_ATTNS
        results["models"] = runner.bench_models(args.model, attns, **common)
    if args.what in ("papers", "all"):
        log("papers' figures …")
        results["papers"] = papers.paper_macs_table()
    # Recorded last: the gate backend's kernels are built on first use, during the runs.
    timed = args.what != "papers"
    results = {"environment": runner.environment(device, probe_kernels=timed), **results}
    paths = report.write_report(results, out)
    print(report.format_markdown(results))
    log(f"results in {out}")
    if paths["png"] is None and timed:
        log("(no results.png: install attnlab[viz] for the chart)")
    return 0
