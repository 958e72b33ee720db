"""Training and evaluation of DANet-style segmenters (Fu et al., CVPR 2019, arXiv 1809.02983):
a short loop a reader can hold in their head (after nanoGPT).

``main(config)`` builds the data, the model and the optimiser from a :class:`SegmentConfig`,
trains for ``config.epochs`` epochs, evaluates on the validation set after each, and writes to
``config.out``: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one row per epoch:
epoch, train_loss and its terms, val_miou, val_pixel_acc, val_iou per class, lr, time),
``last.pt`` (everything needed to resume) and ``best.pt`` (the epoch with the best mIoU).

Recipe (the paper's, see ``segment/config.py``):

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
configuration fails with a message listing the differing keys.

Example:
    >>> import tempfile
    >>> from attnlab.segment.train import SegmentConfig, main
    >>> config = SegmentConfig(model="fcn_resnet20", image_size=32, crop_size=32, train_size=8,
    ...                        val_size=4, epochs=1, batch_size=4, progress=False,
    ...                        device="cpu", out=tempfile.mkdtemp())
    >>> summary = main(config)
    >>> summary["epochs"], 0.0 <= summary["miou"] <= 1.0, len(summary["iou"])
    (1, True, 5)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.segmentation import Normalize, VOCSegmentation, synthetic_segmentation, train_transform
from ..engine.checkpoint import (
    check_model_config,
    load_checkpoint,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..engine.distributed import resolve_device
from ..engine.train import _autocast, isolated_global_state
from ..metrics.segmentation import ConfusionMatrix
from ..registry import create_model, list_models
from .config import SegmentConfig
from .infer import predict_probs
from .loss import segmentation_loss

__all__ = [
    "SegmentConfig",
    "build_data",
    "evaluate",
    "evaluate_checkpoint",
    "load_segmenter",
    "main",
    "train_one_epoch",
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


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    weights: Mapping[str, float] | None = None,
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    amp: str = "none",
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; ``scheduler`` (if any) steps after every optimiser step.

    Returns:
        {"loss": mean weighted loss per batch, "loss_<name>": mean of each unweighted term,
        "lr": the backbone rate of the epoch's last step}.
    """
    from tqdm import tqdm

    device = torch.device(device)
    model.train()
    sums: dict[str, float] = {}
    lr, batches = optimizer.param_groups[0]["lr"], 0
    bar = tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True
    )
    for images, masks in bar:
        images, masks = images.to(device), masks.to(device)
        with _autocast(device, amp):
            outputs = model(images, aux=True)
        outputs = {name: logits.float() for name, logits in outputs.items()}
        loss, terms = segmentation_loss(
            outputs, masks, weights=weights, ignore_index=ignore_index, return_terms=True
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        if scheduler is not None:
            scheduler.step()
        for name, value in {"loss": loss.detach(), **terms}.items():
            key = name if name == "loss" else f"loss_{name}"
            sums[key] = sums.get(key, 0.0) + float(value)
        batches += 1
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return {**{k: v / max(batches, 1) for k, v in sums.items()}, "lr": lr}


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
        with _autocast(device, amp):
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


def _read_checkpoint(path: str | os.PathLike, map_location: Any) -> dict[str, Any]:
    try:
        return load_checkpoint(path, map_location)
    except ValueError as err:  # torch's unpickling errors span many lines: keep the first
        raise ValueError(str(err).strip().splitlines()[0]) from err


def load_segmenter(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint) of a segmentation checkpoint; a ValueError if the file
    holds another kind of model."""
    checkpoint = _read_checkpoint(path, map_location)
    model_config = checkpoint.get("model_config") or {}
    if (
        model_config.get("name") not in list_models(task="segmentation")
        or "model" not in checkpoint
    ):
        raise ValueError(
            f"{os.fspath(path)} is not a segmentation checkpoint (model "
            f"{model_config.get('name')!r}); train one with attnlab segment train"
        )
    model = create_model(**model_config)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


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


def main(config: SegmentConfig) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; see the module docstring for what is written.

    Returns:
        Summary: miou, pixel_accuracy, iou (last epoch), best_miou, first_miou, train_loss,
        epochs (completed), epoch_time (mean seconds per training epoch), params, out,
        checkpoint (path of last.pt), model_config, device.
    """
    if config.resume and not os.path.isfile(config.resume):
        raise FileNotFoundError(f"checkpoint to resume from not found: {config.resume}")
    with isolated_global_state(deterministic=False):
        return _run(config)


def _run(config: SegmentConfig) -> dict[str, Any]:
    say = print if config.progress else lambda *a: None
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    train_set, val_set, info = build_data(config)
    model = build_model(config, info["num_classes"]).to(device)
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, config.batch_size, shuffle=True, drop_last=True,
                              num_workers=config.workers, generator=generator)  # fmt: skip
    if len(train_loader) == 0:
        raise ValueError(
            f"SegmentConfig.batch_size: {config.batch_size} is larger than the training set "
            f"({len(train_set)} images)"
        )
    # Synthetic scenes share one size; VOC images differ, so they are evaluated one by one.
    val_batch = config.batch_size if config.data == "synthetic" else 1
    val_loader = DataLoader(val_set, val_batch, num_workers=config.workers)
    scheduler = poly_scheduler(optimizer, config.epochs * len(train_loader), config.poly_power)

    start, history, best = 0, [], -1.0
    if config.resume:
        checkpoint = _read_checkpoint(config.resume, device)
        check_model_config(model, checkpoint, config.resume)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, history = checkpoint["epoch"], list(checkpoint["history"])
        best = checkpoint.get("best_miou", -1.0)
        set_rng_state(checkpoint["rng"], generator)
        say(f"resumed from {config.resume} after epoch {start}")

    os.makedirs(config.out, exist_ok=True)
    config.save(os.path.join(config.out, "config.yaml"))
    last_path, val = os.path.join(config.out, "last.pt"), None
    evaluate_options = {"device": device, "amp": config.amp, "ignore_index": config.ignore_index,
                        "classes": info["classes"], **config.eval_options()}  # fmt: skip
    for epoch in range(start + 1, config.epochs + 1):
        started = time.perf_counter()
        train = train_one_epoch(
            model, train_loader, optimizer, scheduler, weights=config.loss_weights(),
            ignore_index=config.ignore_index, device=device, amp=config.amp,
            progress=config.progress, desc=f"epoch {epoch}/{config.epochs}",
        )  # fmt: skip
        seconds = time.perf_counter() - started
        val = evaluate(model, val_loader, info["num_classes"], **evaluate_options)
        row = {"epoch": epoch, "train_loss": train.pop("loss"), "lr": train.pop("lr"),
               **{f"train_{k}": v for k, v in train.items()}, "val_miou": val["miou"],
               "val_pixel_acc": val["pixel_accuracy"], "val_iou": val["iou"],
               "time": seconds}  # fmt: skip
        history.append(row)
        say(
            f"epoch {epoch}/{config.epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_miou {val['miou']:.4f}  pixel_acc {val['pixel_accuracy']:.4f}  "
            f"lr {row['lr']:.3g}  {seconds:.1f}s"
        )
        _write_metrics(config.out, history)
        improved = val["miou"] > best
        best = max(best, val["miou"])
        due = epoch == config.epochs or (config.save_every and epoch % config.save_every == 0)
        if not (due or improved):
            continue
        checkpoint = {
            "model": model.state_dict(), "model_config": model.config,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(generator), "epoch": epoch, "config": config.to_dict(),
            "data_info": plain(info), "history": history, "best_miou": best,
        }  # fmt: skip
        if due:
            save_checkpoint(last_path, checkpoint)
        if improved:
            save_checkpoint(os.path.join(config.out, "best.pt"), checkpoint)
    if val is None:  # resumed at the end: report the weights as they are
        val = evaluate(model, val_loader, info["num_classes"], **evaluate_options)
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
        "out": config.out,
        "checkpoint": last_path,
        "model_config": model.config,
        "device": str(device),
    }


def _write_metrics(out: str, history: list[dict[str, Any]]) -> None:
    """Rewrites metrics.jsonl from the whole history (resume-safe)."""
    with open(os.path.join(out, "metrics.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)
