"""Image classification as a trainer task: cross-entropy, top-1 accuracy, best.pt by accuracy.

``main(config)`` trains a :class:`~attnlab.engine.config.TrainConfig` through the shared
trainer and writes to ``config.out``: ``config.yaml`` (the resolved config), ``metrics.jsonl``
and ``metrics.csv`` (one row per epoch: epoch, train_loss, val_loss, val_acc, lr, time),
``last.pt`` (everything needed to resume exactly) and ``best.pt`` (best validation accuracy).

Recipe details (model, optimiser and schedule: ``recipe.py``):
- Weight decay on weights of rank ≥ 2 only; linear warm-up then cosine or steps, per iteration.
- Mixed precision: ``bf16`` autocast on CPU or CUDA, ``fp16`` on CUDA with a GradScaler.
- Validation loss is plain cross-entropy (no label smoothing), comparable across recipes.
- Precise BN (``precise_bn_images``): BatchNorm statistics recomputed before each evaluation.
- ``main`` restores the global state it touches (RNG states, deterministic-algorithm flags,
  cuDNN flags), so ``attnlab compare`` can call it many times in one process.

Example:
    >>> import tempfile, torch
    >>> from torch.utils.data import TensorDataset
    >>> from attnlab.engine.config import TrainConfig
    >>> from attnlab.engine.tasks.classify import main
    >>> images, labels = torch.rand(16, 3, 8, 8), torch.arange(16) % 2
    >>> data = (TensorDataset(images, labels), TensorDataset(images, labels), {"num_classes": 2})
    >>> config = TrainConfig(epochs=1, batch_size=8, progress=False, out=tempfile.mkdtemp())
    >>> summary = main(config, datasets=data)
    >>> summary["epochs"], 0.0 <= summary["val_acc"] <= 1.0
    (1, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...data import build_datasets
from .. import distributed
from ..checkpoint import plain
from ..config import TrainConfig
from ..precise_bn import update_bn_stats_from_dataset
from ..recipe import build_model, build_optimizer, build_scheduler
from ..trainer import autocast, fit

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "time")


def layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``images`` in channels-last memory format if asked (4-D tensors only)."""
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    *,
    amp: str = "none",
    channels_last: bool = False,
    info: distributed.DistInfo | None = None,
) -> dict[str, float]:
    """Cross-entropy and top-1 accuracy (a fraction) over ``loader`` (summed over processes).

    Returns:
        {"loss", "acc", "count"}.
    """
    device = torch.device(device)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, labels in loader:
        images, labels = layout(images.to(device), channels_last), labels.to(device)
        with autocast(device, amp):
            logits = model(images).float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += len(labels)
    if info is not None:
        distributed.all_reduce_sum(sums, info)
    loss_sum, correct, count = sums.tolist()
    if count == 0:
        raise ValueError("evaluate: the validation set is empty")
    return {"loss": loss_sum / count, "acc": correct / count, "count": int(count)}


class ClassifyTask:
    """What classification adds to the trainer (see ``engine/trainer.py`` for the protocol)."""

    name, score, best_key, csv_columns = "classification", "val_acc", "best_val_acc", METRIC_COLUMNS
    collate = None

    def __init__(
        self, config: TrainConfig, datasets: tuple[Dataset, Dataset, dict] | None = None
    ) -> None:
        self.config, self.datasets = config, datasets
        self.loss_module = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def build_data(self, info: distributed.DistInfo) -> tuple[Dataset, Dataset]:
        c = self.config
        if self.datasets is None:
            # Rank 0 first (it may download); the others then read what it wrote.
            if not info.is_main:
                distributed.barrier(info)
            try:
                self.datasets = build_datasets(
                    c.data, data_dir=c.data_dir, image_size=c.image_size,
                    train_size=c.train_size, val_size=c.val_size, difficulty=c.difficulty,
                    seed=c.data_seed, download=c.download, augment=c.augment,
                )  # fmt: skip
            finally:
                if info.is_main:
                    distributed.barrier(info)
        self.train_set, self.val_set, data_info = self.datasets
        self.data_info = plain(data_info)
        self.device = info.device
        per_rank = c.batch_size // info.world_size
        self.per_rank = per_rank
        self.val_loader = DataLoader(
            self.val_set, per_rank, sampler=distributed.ShardSampler(self.val_set, info),
            num_workers=c.workers, pin_memory=info.device.type == "cuda",
        )  # fmt: skip
        return self.train_set, self.val_set

    def build_model(self) -> nn.Module:
        model = build_model(self.config, self.data_info)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.config)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> Any:
        return build_scheduler(optimizer, self.config, steps)

    def drop_last(self, items: int, batch: int) -> bool:
        return False

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict, int]:
        images, labels = batch
        images = layout(images.to(self.device, non_blocking=True), self.config.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.config.amp):
            logits = model(images)
        return self.loss_module(logits.float(), labels), {}, len(labels)

    def evaluate(self, model: nn.Module, info: distributed.DistInfo) -> dict[str, float]:
        c = self.config
        update_bn_stats_from_dataset(
            model, self.train_set, c.precise_bn_images, device=self.device,
            batch_size=self.per_rank, channels_last=c.channels_last,
        )  # fmt: skip
        return evaluate(
            model, self.val_loader, self.device, amp=c.amp, info=info,
            channels_last=c.channels_last,
        )  # fmt: skip

    def row(self, epoch: int, train: dict, val: dict, seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "train_loss": train["loss"], "val_loss": val["loss"],
                "val_acc": val["acc"], "lr": train["lr"], "time": seconds}  # fmt: skip

    def line(self, row: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
            f"lr {row['lr']:.3g}  {row['time']:.1f}s"
        )

    def extras(self) -> dict[str, Any]:
        return {"data_info": self.data_info}

    def summary(
        self, model: nn.Module, val: dict, history: list, best: float, last: str, info: Any
    ) -> dict[str, Any]:
        return {
            "val_acc": val["acc"],
            "val_loss": val["loss"],
            "best_val_acc": max(best, val["acc"]),
            "train_loss": history[-1]["train_loss"] if history else float("nan"),
            "epochs": len(history),
            "epoch_time": float(np.mean([r["time"] for r in history])) if history else 0.0,
            "params": sum(p.numel() for p in model.parameters()),
            "out": self.config.out,
            "model_config": model.config,
            "image_size": self.data_info.get("image_size"),
            "checkpoint": last,
            "world_size": info.world_size,
            "device": str(info.device),
        }


def main(
    config: TrainConfig, *, datasets: tuple[Dataset, Dataset, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; see the module docstring for what is written.

    Args:
        config: the run.
        datasets: (train, val, info) to use instead of ``attnlab.data.build_datasets``; info
            needs ``num_classes`` (and may give ``in_chans``, ``image_size``, ``classes``,
            ``mean``, ``std``, which are stored in the checkpoints for ``attnlab predict``).

    Returns:
        Summary: val_acc, val_loss, best_val_acc, train_loss (last epoch), epochs (completed),
        epoch_time (mean seconds per training epoch), params, out, model_config, image_size,
        checkpoint (path of last.pt), world_size, device.
    """
    return fit(ClassifyTask(config, datasets), config)
