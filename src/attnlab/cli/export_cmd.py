"""``attnlab export``: a checkpoint → an ONNX file, checked in onnxruntime.

The model is rebuilt from the checkpoint's ``model_config`` and weights (any task), exported
with :func:`attnlab.export_onnx` at the training input size (``--input-size`` overrides it) and,
unless ``--no-check``, run in onnxruntime on a random input (and, with ``--dynamic``, on a second
batch and size) and compared with PyTorch.

Example:
    >>> from attnlab.cli import main
    >>> main(["export", "--checkpoint", "missing.pt"])
    2

Typical use::

    attnlab export --checkpoint runs/x/best.pt --dynamic --out model.onnx
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from ..engine.checkpoint import load_model
from ..export import DEFAULT_OPSET, DYNAMO_MIN_OPSET, check_onnx, export_onnx
from . import UsageError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="export a checkpoint to ONNX (checked in onnxruntime)",
        description="Export a checkpoint's model to ONNX and compare onnxruntime's outputs with "
        "PyTorch's (needs the export extra: pip install 'attnlab[export]').",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file")
    parser.add_argument("--out", metavar="FILE",
                        help="ONNX file (default: the checkpoint path, .onnx)")  # fmt: skip
    parser.add_argument("--opset", type=int, metavar="N",
                        help="ONNX opset version (default: 17; 18 with --dynamo)")  # fmt: skip
    parser.add_argument("--dynamic", action="store_true",
                        help="symbolic batch, height and width")  # fmt: skip
    parser.add_argument("--input-size", type=int, metavar="N",
                        help="square input side (default: the training size)")  # fmt: skip
    parser.add_argument("--dynamo", action="store_true",
                        help="torch.export-based exporter (needs onnxscript)")  # fmt: skip
    parser.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime comparison")  # fmt: skip


def training_size(checkpoint: dict[str, Any], model_config: dict[str, Any]) -> int | None:
    """The input side a checkpoint was trained at, where it records one."""
    info = checkpoint.get("data_info") or {}
    config = checkpoint.get("config") or {}
    for source, key in (
        (checkpoint, "input_size"),
        (info, "crop_size"),
        (info, "image_size"),
        (config, "input_size"),
        (config, "crop_size"),
        (config, "image_size"),
        (model_config, "input_size"),
    ):
        value = source.get(key)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, int) and value > 0:
            return value
    return None


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size < 1:
        raise UsageError(f"--input-size must be >= 1, got {args.input_size}")
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            if package == "onnx" or not args.no_check:
                raise UsageError(
                    f"attnlab export needs {package}: pip install 'attnlab[export]'"
                ) from None
    model, checkpoint = load_model(args.checkpoint, task=None)
    size = args.input_size or training_size(checkpoint, model.config)
    if size is None:
        raise UsageError(f"{args.checkpoint} records no input size; give --input-size")
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".onnx"
    shape = (1, int(model.config.get("in_chans", 3)), size, size)
    export_onnx(model, shape, out, opset=args.opset, dynamic=args.dynamic, dynamo=args.dynamo)
    opset = args.opset or (DYNAMO_MIN_OPSET if args.dynamo else DEFAULT_OPSET)
    print(f"{args.checkpoint} → {out} (opset {opset}, input {'×'.join(map(str, shape))}"
          f"{', dynamic batch and size' if args.dynamic else ''})")  # fmt: skip
    if args.no_check:
        return 0
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=g)]
    if args.dynamic:
        # Another batch and size; a multiple of 32 keeps every model's constraint (YOLO).
        other = size + 32
        inputs.append(torch.randn(2, shape[1], other, other, generator=g))
    for x in inputs:
        error = check_onnx(model, out, x)
        print(f"onnxruntime vs PyTorch on {'×'.join(map(str, x.shape))}: max |diff| {error:.2e}")
    return 0
