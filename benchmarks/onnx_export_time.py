"""Wall time of ONNX export: the TorchScript-based exporter (attnlab's default) against the
``torch.export``-based one (PyTorch's default, ``dynamo=True``, needs onnxscript).

Exports one model ``--repeats`` times with each exporter (dynamic batch and size, the reference
path) and prints the median seconds of each and their same-run ratio. The first export of the
``torch.export`` path in a process includes one-time imports; it is timed separately. The
machine's load average is printed before and after: other processes inflate every figure.

Usage:
    python benchmarks/onnx_export_time.py --model resnet18 --attn cbam --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import attnlab


def timed(model: torch.nn.Module, path: str, dynamo: bool) -> float:
    start = time.perf_counter()
    attnlab.export_onnx(model, (1, 3, 224, 224), path, dynamic=True, dynamo=dynamo)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--attn", default="cbam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = attnlab.create_model(args.model, attn=args.attn or None).eval()
    print(f"{args.model} attn={args.attn} threads={args.threads} load {os.getloadavg()[:2]}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        script = [timed(model, path, False) for _ in range(args.repeats)]
        first = timed(model, path, True)
        dynamo = [timed(model, path, True) for _ in range(args.repeats)]
    a, b = statistics.median(script), statistics.median(dynamo)
    print(f"torchscript exporter: median {a:.2f} s of {[round(t, 2) for t in script]}")
    print(f"torch.export exporter: first call {first:.2f} s, then median {b:.2f} s of "
          f"{[round(t, 2) for t in dynamo]}")  # fmt: skip
    print(f"ratio torch.export / torchscript (medians): {b / a:.1f}x")
    print(f"load after {os.getloadavg()[:2]}")


if __name__ == "__main__":
    main()
