"""DANet-style segmentation (Fu et al., CVPR 2019, arXiv 1809.02983) as a trainer task.

``main(config)`` trains a :class:`SegmentConfig` through the shared trainer
(``engine/trainer.py``), evaluates on the validation set after each epoch, and writes to
``config.out``: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one row per epoch:
epoch, train_loss and its terms, val_miou, val_pixel_acc, val_iou per class, lr, time),
``last.pt`` (everything needed to resume) and ``best.pt`` (the epoch with the best mIoU).

Recipe (the paper's, see ``segment_config.py``):

- loss: Σ_k w_k·CE over the outputs ``out`` (fused), ``pam`` and ``cam`` (single-branch and FCN
  heads have ``out`` only), pixels labelled ``ignore_index`` left out;
- SGD, momentum 0.9; two learning rates from ``model.parameter_groups()``: backbone ``lr``,
  head ``head_lr_mult × lr``; weight decay on weights of rank ≥ 2 only (as the classification
  engine; the authors decay every parameter);
- poly schedule per iteration: lr_t = lr_0 · (1 − t/T)^0.9, T = epochs × steps per epoch;
- ``amp="bf16"``: forward under bfloat16 autocast (CPU or CUDA), loss in float32;
- evaluation: mIoU, per-class IoU and pixel accuracy from a confusion matrix, single scale by
  default, or multi-scale / flip / sliding windows through ``predict_probs``.

Checkpoints carry the model config and the run config; resuming into a model of another
configuration fails with a message listing the differing keys. Under torchrun, every process
trains on its shard of each batch and rank 0 evaluates.

Example:
    >>> import tempfile
    >>> from attnlab.engine.tasks.segment import SegmentConfig, main
    >>> config = SegmentConfig(model="fcn_resnet20", image_size=32, crop_size=32, train_size=8,
    ...                        val_size=4, epochs=1, batch_size=4, progress=False,
    ...                        device="cpu", out=tempfile.mkdtemp())
    >>> summary = main(config)
    >>> summary["epochs"], 0.0 <= summary["miou"] <= 1.0, len(summary["iou"])
    (1, True, 5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...data.segmentation import Normalize, VOCSegmentation, synthetic_segmentation, train_transform
from ...metrics.segmentation import ConfusionMatrix
from ...registry import create_model
from ...segment.infer import predict_probs
from ...segment.loss import segmentation_loss
from .. import distributed
from ..checkpoint import build_model_from, load_checkpoint, require_task
from ..distributed import resolve_device
from ..trainer import autocast, fit
from .segment_config import SegmentConfig

__all__ = [
    "SegmentConfig",
    "SegmentTask",
    "build_data",
    "evaluate",
    "evaluate_checkpoint",
    "load_segmenter",
    "main",
]

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # synthetic scenes and VOC alike, from scratch


def build_data(config: SegmentConfig, *, train: bool = True) -> tuple[Dataset, Dataset, dict]:
    """(train set, val set, info) as ``config`` says; info: num_classes, classes, mean, std,
    crop_size, ignore_index (stored in the checkpoints for ``attnlab segment predict``).

    Training items are augmented (scale, crop, flip, jitter, normalise); validation items are
    whole images, normalised. ``train=False`` skips building the training set (returns None).
    """
    augment = train_transform(config.crop_size, scale=tuple(config.scale), mean=MEAN, std=STD,
                              jitter=config.jitter, ignore_index=config.ignore_index)  # fmt: skip
    plain_tf = Normalize(MEAN, STD)
    if config.data == "synthetic":
        options = {"size": config.image_size, "num_classes": (config.num_classes or 5) - 1,
                   "difficulty": config.difficulty, "num_targets": config.num_targets,
                   "seed": config.data_seed}  # fmt: skip
        val_set = synthetic_segmentation(
            split="val", length=config.val_size, transform=plain_tf, **options
        )
        train_set = train and synthetic_segmentation(
            split="train", length=config.train_size, transform=augment, **options
        )
    else:
        options = {"num_classes": config.num_classes or 21, "ignore_index": config.ignore_index}
        val_set = VOCSegmentation(config.data_dir, config.val_split, transform=plain_tf, **options)
        train_set = train and VOCSegmentation(
            config.data_dir, config.train_split, transform=augment, **options
        )
    info = {"num_classes": val_set.num_classes, "classes": list(val_set.classes),
            "mean": list(MEAN), "std": list(STD), "crop_size": config.crop_size,
            "ignore_index": config.ignore_index}  # fmt: skip
    return train_set or None, val_set, info


def build_optimizer(model: nn.Module, config: SegmentConfig) -> torch.optim.SGD:
    """SGD with the backbone at ``lr`` and the head at ``head_lr_mult × lr``."""
    if not hasattr(model, "parameter_groups"):
        raise ValueError(f"model {config.model!r} has no parameter_groups() (backbone/head)")
    groups = []
    for part, params in model.parameter_groups().items():
        lr = config.lr * (config.head_lr_mult if part == "head" else 1.0)
        decay = [p for p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def poly_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_t = lr_0 · (1 − t / total_steps)^power for every parameter group, per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / total_steps) ** power
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int | None = None,
    amp: str = "none",
    ignore_index: int = 255,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of ``model`` over ``loader``.

    Args:
        model: returns logits at the input size (a dict's ``"out"`` is used).
        loader: (images, masks) batches; images normalised as in training.
        num_classes: classes of the confusion matrix.
        device: where the model runs.
        scales, flip, crop_size: ``predict_probs`` options (crop_size: sliding windows).
        amp: ``"bf16"`` runs the model under bfloat16 autocast.
        ignore_index: label of pixels not counted.
        classes: class names for the ``"iou"`` dict (default: numbers).

    Returns:
        {"miou", "pixel_accuracy", "iou": {class: IoU or None (absent)}, "images"}.
    """
    device = torch.device(device)
    matrix, count = ConfusionMatrix(num_classes, ignore_index), 0
    for images, masks in loader:
        with autocast(device, amp):
            probs = predict_probs(
                model, images.to(device), scales=scales, flip=flip, crop_size=crop_size
            )
        matrix.update(probs.argmax(1).cpu(), masks)
        count += len(images)
    if count == 0:
        raise ValueError("evaluate: the validation set is empty")
    return {**matrix.compute(classes), "images": count}


def build_model(config: SegmentConfig, num_classes: int) -> nn.Module:
    """The configured segmentation model with the data's number of classes."""
    try:
        return create_model(config.model, num_classes=num_classes, **config.model_kwargs)
    except TypeError as err:  # an option the model does not take
        raise ValueError(
            f"SegmentConfig: model {config.model!r} with these options: {err}"
        ) from err


def load_segmenter(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint) of a segmentation checkpoint; a ValueError if the file
    holds another kind of model or its weights do not fit its model config."""
    checkpoint = load_checkpoint(path, map_location)
    require_task(checkpoint, "segmentation", path)
    name = (checkpoint.get("model_config") or {}).get("name")
    if "model" not in checkpoint or name is None:
        raise ValueError(
            f"{os.fspath(path)} is not a segmentation checkpoint (model {name!r}); train one "
            "with attnlab segment train"
        )
    return build_model_from(checkpoint, path), checkpoint


def evaluate_checkpoint(
    path: str | os.PathLike, *, device: str = "auto", **overrides: Any
) -> dict[str, Any]:
    """Evaluates a checkpoint of :func:`main` on the validation set its config names.

    Args:
        path: ``last.pt`` or ``best.pt``.
        device: where the model runs.
        **overrides: config fields replacing the checkpoint's (``data_dir``, ``val_split``,
            ``val_size``, ``batch_size``, ``multi_scale``, ``scales``, ``flip``, ``sliding``,
            ``crop_size``, ``amp`` …).

    Returns:
        :func:`evaluate`'s dict plus ``"checkpoint"``, ``"epoch"`` and ``"options"``.
    """
    torch_device = resolve_device(device)
    model, checkpoint = load_segmenter(path, map_location=torch_device)
    saved = dict(checkpoint.get("config") or {})
    config = SegmentConfig.from_dict(
        {**saved, **overrides, "resume": None, "device": device}, source=os.fspath(path)
    )
    _, val_set, info = build_data(config, train=False)
    if info["num_classes"] != model.num_classes:
        raise ValueError(
            f"{os.fspath(path)}: the model has {model.num_classes} classes but the data "
            f"{info['num_classes']}"
        )
    val_batch = config.batch_size if config.data == "synthetic" else 1
    loader = DataLoader(val_set, val_batch, num_workers=config.workers)
    result = evaluate(
        model.to(torch_device), loader, info["num_classes"], device=torch_device, amp=config.amp,
        ignore_index=config.ignore_index, classes=info["classes"], **config.eval_options(),
    )  # fmt: skip
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in config.eval_options().items()}
    return {**result, "checkpoint": os.fspath(path), "epoch": checkpoint.get("epoch"),
            "options": options}  # fmt: skip


class SegmentTask:
    """What segmentation adds to the trainer (see ``engine/trainer.py`` for the protocol)."""

    name, score, best_key, csv_columns = "segmentation", "val_miou", "best_miou", None
    collate = None

    def __init__(self, config: SegmentConfig) -> None:
        self.config = config

    def build_data(self, info: distributed.DistInfo) -> tuple[Dataset, Dataset]:
        c = self.config
        self.train_set, self.val_set, self.info = build_data(c)
        self.device = info.device
        # Synthetic scenes share one size; VOC images differ, so they are evaluated one by one.
        val_batch = c.batch_size if c.data == "synthetic" else 1
        self.val_loader = DataLoader(self.val_set, val_batch, num_workers=c.workers)
        return self.train_set, self.val_set

    def build_model(self) -> nn.Module:
        return build_model(self.config, self.info["num_classes"])

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.config)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> Any:
        return poly_scheduler(optimizer, self.config.epochs * steps, self.config.poly_power)

    def drop_last(self, items: int, batch: int) -> bool:
        return True

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict, int]:
        images, masks = batch
        images, masks = images.to(self.device), masks.to(self.device)
        with autocast(self.device, self.config.amp):
            outputs = model(images, aux=True)
        outputs = {name: logits.float() for name, logits in outputs.items()}
        loss, terms = segmentation_loss(
            outputs, masks, weights=self.config.loss_weights(),
            ignore_index=self.config.ignore_index, return_terms=True,
        )  # fmt: skip
        return loss, {f"loss_{k}": v for k, v in terms.items()}, len(images)

    def evaluate(self, model: nn.Module, info: distributed.DistInfo) -> dict[str, Any]:
        result = None
        if info.is_main:
            c = self.config
            result = evaluate(
                model, self.val_loader, self.info["num_classes"], device=self.device, amp=c.amp,
                ignore_index=c.ignore_index, classes=self.info["classes"], **c.eval_options(),
            )  # fmt: skip
        return distributed.broadcast_object(result, info)

    def row(self, epoch: int, train: dict, val: dict, seconds: float) -> dict[str, Any]:
        train = dict(train)
        return {"epoch": epoch, "train_loss": train.pop("loss"), "lr": train.pop("lr"),
                **{f"train_{k}": v for k, v in train.items()}, "val_miou": val["miou"],
                "val_pixel_acc": val["pixel_accuracy"], "val_iou": val["iou"],
                "time": seconds}  # fmt: skip

    def line(self, row: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_miou {row['val_miou']:.4f}  pixel_acc {row['val_pixel_acc']:.4f}  "
            f"lr {row['lr']:.3g}  {row['time']:.1f}s"
        )

    def extras(self) -> dict[str, Any]:
        return {"data_info": dict(self.info)}

    def summary(
        self, model: nn.Module, val: dict, history: list, best: float, last: str, info: Any
    ) -> dict[str, Any]:
        return {
            "miou": val["miou"],
            "pixel_accuracy": val["pixel_accuracy"],
            "iou": val["iou"],
            "best_miou": max(best, val["miou"]),
            "first_miou": history[0]["val_miou"] if history else float("nan"),
            "train_loss": history[-1]["train_loss"] if history else float("nan"),
            "epochs": len(history),
            "epoch_time": sum(r["time"] for r in history) / len(history) if history else 0.0,
            "params": sum(p.numel() for p in model.parameters()),
            "out": self.config.out,
            "checkpoint": last,
            "model_config": model.config,
            "device": str(info.device),
            "world_size": info.world_size,
        }


def main(config: SegmentConfig) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; see the module docstring for what is written.

    Returns:
        Summary: miou, pixel_accuracy, iou (last epoch), best_miou, first_miou, train_loss,
        epochs (completed), epoch_time (mean seconds per training epoch), params, out,
        checkpoint (path of last.pt), model_config, device, world_size.
    """
    return fit(SegmentTask(config), config)
