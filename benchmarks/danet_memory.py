"""Peak memory of full-resolution DANet (ResNet-50, output stride 8) on the CPU.

Inference: one 1×3×1024×2048 image (Cityscapes size), eval mode, no grad. ``--train``: a batch
of two 768×768 crops, forward + backward of the three-term loss. Two figures, each measured in
its own fresh child process after a warm-up on a small image (one-time costs not counted):

- tensor peak: ``attnlab.bench.memory.peak_memory``, the most tensor storage alive at once
  during the call beyond what existed before it (activations, saved tensors, gradients;
  deterministic; weights not included);
- RSS growth: the growth of the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) over the resident set just before the call — what the machine had to
  provide, allocator caches and kernel scratch included; the process's whole peak RSS (weights,
  libraries) is printed too.

Issue 7 target: inference peak < 6 GiB. The unblocked position attention's need is computed,
not run: at output stride 8 a 1024×2048 image gives N = 128·256 = 32768 positions, and the
N×N float32 energy matrix and its softmax are 4 GiB each, 8 GiB together per image.

Usage:
    python benchmarks/danet_memory.py                      # 1024×2048 inference (minutes)
    python benchmarks/danet_memory.py --train              # 2×768×768 forward + backward
    python benchmarks/danet_memory.py --size 128 256       # smoke test
    python benchmarks/danet_memory.py --size 128 256 --train --batch 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

GIB = 1024**3


def child(args: argparse.Namespace) -> dict:
    import torch

    import attnlab
    from attnlab.bench.memory import peak_memory, rss_growth
    from attnlab.segment.loss import segmentation_loss

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = attnlab.create_model(args.model, num_classes=args.classes)
    model.train(args.train)
    height, width = args.size

    def step(x: torch.Tensor) -> None:
        if args.train:
            outputs = model(x, aux=True)
            target = torch.randint(0, args.classes, (x.shape[0], *x.shape[-2:]))
            segmentation_loss(outputs, target).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    step(torch.randn(args.batch, 3, 64, 64))  # warm-up: first dispatches, allocator pools
    x = torch.randn(args.batch, 3, height, width)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    start = time.perf_counter()
    if args.child == "tensor":
        result = {"tensor_bytes": peak_memory(lambda: step(x))}
    else:
        rss = rss_growth(lambda: step(x))
        result = {"rss_growth_bytes": rss["growth_bytes"], "rss_peak_bytes": rss["peak_bytes"]}
    return {**result, "seconds": time.perf_counter() - start, "weight_bytes": weights}


def measure(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--size", *map(str, args.size),
           "--batch", str(args.batch), "--model", args.model, "--classes", str(args.classes),
           "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--train"] if args.train else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"killed (exit {out.returncode})"]
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def unblocked_pam_bytes(height: int, width: int, batch: int, stride: int = 8) -> int:
    """Bytes of the N×N float32 energy and softmax matrices of an unblocked PAM."""
    n = -(-height // stride) * -(-width // stride)
    return 2 * batch * n * n * 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size (default: 1024 2048; --train: 768 768)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="default 1; --train: 2")
    parser.add_argument("--train", action="store_true", help="forward + backward (training)")
    parser.add_argument("--model", default="danet_resnet50")
    parser.add_argument("--classes", type=int, default=19, help="Cityscapes: 19")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=("tensor", "rss"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is None:
        args.size = [768, 768] if args.train else [1024, 2048]
    if args.batch is None:
        args.batch = 2 if args.train else 1
    if args.child:
        print(json.dumps(child(args)))
        return 0

    height, width = args.size
    what = "forward + backward (train mode)" if args.train else "inference (eval, no grad)"
    print(f"{args.model}, {args.batch}×3×{height}×{width}, {what}, float32, CPU")
    tensor, rss = measure("tensor", args), measure("rss", args)
    for name, result, key in (("tensor peak", tensor, "tensor_bytes"),
                              ("RSS growth", rss, "rss_growth_bytes")):  # fmt: skip
        if "error" in result:
            print(f"  {name:<12} error: {result['error']}")
        else:
            print(f"  {name:<12} {result[key] / GIB:7.3f} GiB  ({result['seconds']:.1f} s)")
    if "rss_peak_bytes" in rss:
        print(f"  process peak RSS {rss['rss_peak_bytes'] / GIB:.3f} GiB "
              f"(weights {rss['weight_bytes'] / GIB:.3f} GiB)")  # fmt: skip
    need = unblocked_pam_bytes(height, width, args.batch)
    positions = -(-height // 8) * -(-width // 8)
    print(
        f"  unblocked PAM (computed, not run): N = {positions} positions at stride 8, "
        f"N×N float32 energy + softmax × batch {args.batch} = {need / GIB:.3f} GiB"
    )
    measured = [r[k] for r, k in ((tensor, "tensor_bytes"), (rss, "rss_growth_bytes")) if k in r]
    if not args.train and (height, width) == (1024, 2048) and measured:
        verdict = "PASS" if max(measured) < 6 * GIB else "FAIL"
        print(f"target: inference peak < 6 GiB: {max(measured) / GIB:.3f} GiB {verdict}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "tensor": tensor, "rss": rss,
                       "unblocked_pam_bytes": need}, handle, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
