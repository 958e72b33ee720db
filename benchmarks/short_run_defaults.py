"""What two defaults do to short runs: ``zero_init_last`` and precise BN.

Writes a small, easy dataset in the CIFAR-10 python-batch format (the loader ``attnlab train
--data cifar10`` reads): 1,500 training and 500 test images of the ``"easy"`` synthetic scenes,
10 classes, as 5 ``data_batch_*`` files of 300 images, ``test_batch`` and ``batches.meta``.
Then trains ``attnlab train``'s defaults (ResNet-20, SGD 0.1, cosine, batch 64) for a few
epochs, with and without ``zero_init_last`` and with and without precise BN, for the baseline
and CBAM (whose official preset has a spatial BatchNorm of momentum 0.01), and prints the
validation accuracy after every epoch.

Usage:
    python benchmarks/short_run_defaults.py [--epochs 4] [--seeds 0 1] [--variants none cbam]
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile

import numpy as np
import torch


def write_cifar_format(root: str, train: int = 1500, test: int = 500, seed: int = 0) -> str:
    """Writes ``root/cifar-10-batches-py`` from easy synthetic scenes; returns ``root``."""
    from attnlab.data.synthetic import CLASS_GLYPHS, SyntheticScenes

    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(split: str, length: int) -> tuple[np.ndarray, list[int]]:
        scenes = SyntheticScenes(
            split=split, length=length, num_classes=10, difficulty="easy", seed=seed
        )
        items = [scenes.scene(i) for i in range(length)]
        images = torch.stack([s.image for s in items]).mul(255).round().to(torch.uint8)
        return images.reshape(length, 3 * 32 * 32).numpy(), [s.label for s in items]

    data, labels = batch("train", train)
    per = train // 5
    for i in range(5):
        part = {b"data": data[i * per : (i + 1) * per], b"labels": labels[i * per : (i + 1) * per]}
        with open(os.path.join(folder, f"data_batch_{i + 1}"), "wb") as handle:
            pickle.dump(part, handle)
    data, labels = batch("test", test)
    with open(os.path.join(folder, "test_batch"), "wb") as handle:
        pickle.dump({b"data": data, b"labels": labels}, handle)
    with open(os.path.join(folder, "batches.meta"), "wb") as handle:
        pickle.dump({b"label_names": [n.encode() for n in CLASS_GLYPHS]}, handle)
    return root


def main() -> None:
    from attnlab.engine.config import TrainConfig
    from attnlab.engine.train import main as train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["none", "cbam"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar_format(os.path.join(tmp, "data"))
        print("| attention | zero_init_last | precise BN images | seed | val acc per epoch (%) |")
        print("|---|---|---|---|---|")
        for attn in args.variants:
            for zero_init in (True, False):
                for precise in (0, 512):
                    for seed in args.seeds:
                        config = TrainConfig(
                            data="cifar10", data_dir=root, epochs=args.epochs, attn=attn,
                            model_kwargs={"zero_init_last": zero_init}, seed=seed,
                            precise_bn_images=precise, progress=False, save_every=0,
                            out=os.path.join(tmp, f"run-{attn}-{zero_init}-{precise}-{seed}"),
                        )  # fmt: skip
                        train(config)
                        with open(os.path.join(config.out, "metrics.csv")) as handle:
                            rows = handle.read().splitlines()[1:]
                        accs = [100 * float(r.split(",")[3]) for r in rows]
                        print(
                            f"| {attn} | {zero_init} | {precise} | {seed} | "
                            + " → ".join(f"{a:.1f}" for a in accs)
                            + " |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
