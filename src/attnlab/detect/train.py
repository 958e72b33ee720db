"""YOLOv4-tiny detection training (Bochkovskiy et al., arXiv 2004.10934): loop, mAP, predict.

``main(config)`` builds the data and a ``yolov4_tiny`` from a :class:`DetectConfig`, trains for
``config.epochs`` epochs, evaluates mAP@0.5 (VOC all-point) and mAP@[.5:.95] (COCO) on the
validation split after each, and writes to ``config.out``: ``config.yaml`` (the resolved
config), ``metrics.jsonl`` (one row per epoch: epoch, train_loss, box, obj, cls, map50, map,
lr, time), ``last.pt`` (everything needed to resume) and ``best.pt`` (best mAP@0.5).

- Evaluation is in the original image's pixels: each validation image is letterboxed to the
  input size, detected, and its boxes are mapped back (the same path as ``predict``); VOC
  ``difficult`` objects are ignored, not counted as misses.
- Recipe: AdamW or SGD, weight decay on rank-≥2 weights only (never on biases or BN), linear
  warm-up then cosine to 0, per iteration; optional gradient-norm clipping.
- Checkpoints hold state dicts and plain values only: model, model_config (phi/attention,
  classes, anchors, input size), optimizer, scheduler, rng, epoch, config, classes, anchors,
  input_size, history. Resuming into a model of another config is a ValueError listing the
  differing keys (:func:`attnlab.engine.checkpoint.check_model_config`).

Example:
    >>> import tempfile
    >>> from attnlab.detect.train import DetectConfig, main
    >>> config = DetectConfig(input_size=64, train_size=4, val_size=2, epochs=1, batch_size=2,
    ...                       progress=False, out=tempfile.mkdtemp())
    >>> summary = main(config)
    >>> summary["epochs"], 0.0 <= summary["map50"] <= 1.0
    (1, True)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..engine.checkpoint import (
    check_model_config,
    load_checkpoint,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..engine.recipe import build_optimizer
from ..engine.train import isolated_global_state
from ..metrics.detection import evaluate_detections
from ..registry import create_model
from .boxes import letterbox, scale_boxes
from .config import DetectConfig
from .decode import decode_outputs, postprocess
from .loss import YoloLoss

# Data --------------------------------------------------------------------------------------


def _class_names(config: DetectConfig) -> list[str]:
    from ..data.detection import VOC_CLASSES

    spec = config.class_names
    if spec is None and config.data == "voc":
        return list(VOC_CLASSES)
    if spec is None:
        spec = os.path.join(config.data_dir, "classes.txt")
        if not os.path.isfile(spec):
            raise ValueError(f"yolo data needs class names: --class-names or a file {spec}")
    if os.path.isfile(spec):
        with open(spec) as handle:
            return [line.strip() for line in handle if line.strip()]
    return [name.strip() for name in spec.split(",") if name.strip()]


def build_dataset(config: DetectConfig, split: str, *, train: bool = False) -> Dataset:
    """One split of ``config``'s data: augmented if ``train`` (and ``config.augment``), else
    untransformed (evaluation letterboxes it). ``split``: synthetic ``train``, ``val`` or
    ``test``; VOC an ``ImageSets/Main`` list; YOLO a sub-folder of ``data_dir``."""
    from ..data import detection as det

    size = config.input_size
    transform = None
    if train:
        transform = det.train_transform(size) if config.augment else det.eval_transform(size)
    if config.data == "synthetic":
        length = {"train": config.train_size}.get(split, config.val_size)
        return det.SyntheticDetection(
            size=size, split=split, length=length, transform=transform, seed=config.data_seed,
            num_classes=config.num_classes, num_targets=config.num_targets,
            difficulty=config.difficulty,
        )  # fmt: skip
    if not os.path.isdir(config.data_dir):
        raise ValueError(f"data directory not found: {config.data_dir}")
    if config.data == "voc":
        return det.VOCDetection(
            config.data_dir, split, classes=_class_names(config), transform=transform
        )
    root = os.path.join(config.data_dir, split)
    return det.YOLODetection(root, _class_names(config), transform=transform)


def build_data(config: DetectConfig) -> tuple[Dataset, Dataset, list[str]]:
    """(augmented training set, untransformed validation set, class names) of ``config``."""
    synthetic = config.data == "synthetic"
    train = build_dataset(config, "train" if synthetic else config.train_split, train=True)
    val = build_dataset(config, "val" if synthetic else config.val_split)
    return train, val, list(train.classes)


def collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
    """(B×3×H×W images, list of B N×5 target tensors)."""
    return torch.stack([image for image, _ in batch]), [t for _, t in batch]


def _ground_truth(dataset: Dataset, index: int) -> tuple[Tensor, dict[str, Tensor]]:
    """(original image, its ground truth with VOC ``difficult`` flags where the data has them)."""
    image, targets = dataset[index]
    if hasattr(dataset, "annotation"):  # file datasets: every box, difficult ones flagged
        rec = dataset.annotation(index)
        return image, {k: rec[k] for k in ("boxes", "labels", "difficult")}
    return image, {"boxes": targets[:, 1:5], "labels": targets[:, 0].long()}


# Inference and evaluation ------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[Tensor],
    input_size: int,
    *,
    conf_threshold: float = 0.25,
    nms_threshold: float = 0.45,
    max_det: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections of 3×H×W images (any sizes) in their own pixels: letterbox to ``input_size``,
    run the model, decode, filter, NMS, map boxes back and clip them to each image.

    Returns:
        Per image, ``boxes`` (D×4 xyxy), ``scores`` (D), ``labels`` (D), highest score first.
    """
    model.eval()
    device = next(model.parameters()).device
    boxed = [letterbox(image, input_size) for image in images]
    outputs = model(torch.stack([b[0] for b in boxed]).to(device))
    cfg = model.config
    decoded = decode_outputs([o.float() for o in outputs], cfg["anchors"], cfg["anchor_masks"])
    dets = postprocess(decoded.cpu(), conf_threshold, nms_threshold, max_det)
    for det, (_, scale, pad), image in zip(dets, boxed, images, strict=True):
        det["boxes"] = scale_boxes(det["boxes"], scale, pad, tuple(image.shape[-2:]))
    return dets


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    input_size: int,
    *,
    batch_size: int = 16,
    conf_threshold: float = 0.01,
    nms_threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP@0.5, mAP@[.5:.95] and the per-class table on an untransformed detection dataset.

    Returns:
        :func:`attnlab.metrics.evaluate_detections`'s result.
    """
    if len(dataset) == 0:
        raise ValueError("evaluate: the validation set is empty")
    detections, truths = [], []
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        items = [_ground_truth(dataset, i) for i in range(start, stop)]
        images = [image for image, _ in items]
        detections += predict(model, images, input_size, conf_threshold=conf_threshold,
                              nms_threshold=nms_threshold)  # fmt: skip
        truths += [gt for _, gt in items]
    return evaluate_detections(detections, truths, model.config["num_classes"])


# Training ----------------------------------------------------------------------------------


def build_model(config: DetectConfig, num_classes: int) -> nn.Module:
    """The configured ``yolov4_tiny`` for ``num_classes`` classes."""
    options = {"attn": config.attn} if config.attn else {"phi": config.phi}
    if config.attn_kwargs:
        options["attn_kwargs"] = config.attn_kwargs
    size = config.input_size
    try:
        return create_model(
            "yolov4_tiny", num_classes=num_classes, input_size=(size, size), **options
        )
    except TypeError as err:  # an option the attention does not take
        raise ValueError(f"DetectConfig: yolov4_tiny with these options: {err}") from err


def cosine_with_warmup(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warm-up, then cosine to 0."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = min(1.0, max(0.0, step - warmup) / max(1.0, total - warmup))
    return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: YoloLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    grad_clip: float | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns mean ``loss``, ``box``, ``obj``, ``cls`` and ``lr``."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    model.train()
    sums, count, lr = dict.fromkeys(("loss", "box", "obj", "cls"), 0.0), 0, 0.0
    bar = tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True
    )
    for images, targets in bar:
        images = images.to(device)
        losses = criterion(model(images), [t.to(device) for t in targets])
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()
        for key in sums:
            sums[key] += float(losses[key].detach()) * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    return {**{k: v / max(count, 1) for k, v in sums.items()}, "lr": lr}


def main(config: DetectConfig) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; see the module docstring for what is written.

    Returns:
        Summary: map50, map (last epoch), best_map50, train_loss, epochs (completed),
        epoch_time (mean s/epoch of training), params, out, checkpoint (last.pt), classes.
    """
    if config.resume and not os.path.isfile(config.resume):
        raise FileNotFoundError(f"checkpoint to resume from not found: {config.resume}")
    threads = torch.get_num_threads()
    with isolated_global_state(False):
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            return _run(config)
        finally:
            torch.set_num_threads(threads)


def _run(config: DetectConfig) -> dict[str, Any]:
    say = print if config.progress else lambda *a: None
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    train_set, val_set, classes = build_data(config)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"data {config.data!r}: the training or validation set is empty")
    model = build_model(config, len(classes)).to(device)
    criterion = YoloLoss.from_config(model.config, label_smoothing=config.label_smoothing)
    criterion = criterion.to(device)
    optimizer = build_optimizer(model, config)  # duck-typed: optimizer, lr, momentum, decay
    generator = torch.Generator().manual_seed(config.seed)
    # drop_last: a last batch of one image would break BatchNorm.
    loader = DataLoader(train_set, config.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=config.workers, generator=generator,
                        drop_last=len(train_set) > config.batch_size)  # fmt: skip
    total, warmup = config.epochs * len(loader), config.warmup_epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total, warmup)
    )

    start, history, best = 0, [], -1.0
    if config.resume:
        checkpoint = load_checkpoint(config.resume, map_location=device)
        check_model_config(model, checkpoint, config.resume)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], generator)
        start, history = checkpoint["epoch"], list(checkpoint["history"])
        best = checkpoint.get("best_map50", -1.0)
        say(f"resumed from {config.resume} after epoch {start}")

    os.makedirs(config.out, exist_ok=True)
    config.save(os.path.join(config.out, "config.yaml"))
    last_path = os.path.join(config.out, "last.pt")
    result = None
    for epoch in range(start + 1, config.epochs + 1):
        started = time.perf_counter()
        train = train_one_epoch(model, loader, criterion, optimizer, scheduler,
                                grad_clip=config.grad_clip, progress=config.progress,
                                desc=f"epoch {epoch}/{config.epochs}")  # fmt: skip
        seconds = time.perf_counter() - started
        result = _evaluate(model, val_set, config)
        row = {"epoch": epoch, "train_loss": train["loss"], "box": train["box"],
               "obj": train["obj"], "cls": train["cls"], "map50": result["map50"],
               "map": result["map"], "lr": train["lr"], "time": seconds}  # fmt: skip
        history.append(row)
        say(
            f"epoch {epoch}/{config.epochs}  loss {row['train_loss']:.4f} (box {row['box']:.3f} "
            f"obj {row['obj']:.3f} cls {row['cls']:.3f})  mAP@0.5 {row['map50']:.4f}  "
            f"mAP {row['map']:.4f}  {seconds:.1f}s"
        )
        _write_metrics(config.out, history)
        score = -1.0 if math.isnan(result["map50"]) else result["map50"]
        improved, best = score > best, max(best, score)
        due = epoch == config.epochs or (config.save_every and epoch % config.save_every == 0)
        if due or improved:
            checkpoint = {
                "model": model.state_dict(), "model_config": model.config,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(generator), "epoch": epoch, "config": config.to_dict(),
                "classes": list(classes), "anchors": model.config["anchors"],
                "input_size": config.input_size, "history": history, "best_map50": best,
            }  # fmt: skip
            if due:
                save_checkpoint(last_path, checkpoint)
            if improved:
                save_checkpoint(os.path.join(config.out, "best.pt"), checkpoint)
    if result is None:  # resumed at the end: report the weights as they are
        result = _evaluate(model, val_set, config)
    return {
        "map50": result["map50"],
        "map": result["map"],
        "best_map50": max(best, result["map50"]),
        "train_loss": history[-1]["train_loss"] if history else float("nan"),
        "epochs": len(history),
        "epoch_time": sum(r["time"] for r in history) / max(len(history), 1),
        "params": sum(p.numel() for p in model.parameters()),
        "out": config.out,
        "checkpoint": last_path,
        "classes": list(classes),
        "per_class": result["per_class"],
    }


def _evaluate(model: nn.Module, val_set: Dataset, config: DetectConfig) -> dict[str, Any]:
    return evaluate(model, val_set, config.input_size, batch_size=config.batch_size,
                    conf_threshold=config.conf_threshold,
                    nms_threshold=config.nms_threshold)  # fmt: skip


def _write_metrics(out: str, history: list[dict[str, Any]]) -> None:
    """Rewrites metrics.jsonl from the whole history (resume-safe)."""
    with open(os.path.join(out, "metrics.jsonl"), "w") as handle:
        handle.writelines(json.dumps(plain(row)) + "\n" for row in history)


def load_detector(
    path: str | os.PathLike, model: nn.Module | None = None, map_location: Any = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint's detector in eval mode, and the checkpoint.

    Args:
        path: a ``last.pt``/``best.pt`` of :func:`main`.
        model: load into this model instead of rebuilding the saved one; a model of another
            config (phi/attention, classes, anchors, input size) is a ValueError listing the
            differing keys.
        map_location: where tensors are loaded.
    """
    checkpoint = load_checkpoint(path, map_location)
    if "model" not in checkpoint or "model_config" not in checkpoint:
        raise ValueError(f"checkpoint {os.fspath(path)} is not a detection checkpoint")
    if model is None:
        model = create_model(**checkpoint["model_config"])
    check_model_config(model, checkpoint, os.fspath(path))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint
