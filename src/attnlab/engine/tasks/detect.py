"""YOLOv4-tiny detection (Bochkovskiy et al., arXiv 2004.10934) as a trainer task.

``main(config)`` trains a :class:`DetectConfig` through the shared trainer, evaluates mAP@0.5
(VOC all-point) and mAP@[.5:.95] (COCO) on the validation split after each epoch, and writes
to ``config.out``: ``config.yaml``, ``metrics.jsonl`` (one row per epoch: epoch, train_loss,
box, obj, cls, map50, map, lr, time), ``last.pt`` (everything needed to resume) and
``best.pt`` (best mAP@0.5).

- Evaluation is in the original image's pixels: each validation image is letterboxed to the
  input size, detected, and its boxes are mapped back (the same path as ``predict``); VOC
  ``difficult`` objects are ignored, not counted as misses. Under torchrun, rank 0 evaluates.
- Recipe: AdamW or SGD, weight decay on rank-≥2 weights only (never on biases or BN), linear
  warm-up then cosine to 0, per iteration; optional gradient-norm clipping.
- Checkpoints hold state dicts and plain values only: model, model_config (phi/attention,
  classes, anchors, input size), optimizer, scheduler, rng, epoch, config, classes, anchors,
  input_size, history.

Example:
    >>> import tempfile
    >>> from attnlab.engine.tasks.detect import DetectConfig, main
    >>> config = DetectConfig(input_size=64, train_size=4, val_size=2, epochs=1, batch_size=2,
    ...                       progress=False, out=tempfile.mkdtemp())
    >>> summary = main(config)
    >>> summary["epochs"], 0.0 <= summary["map50"] <= 1.0
    (1, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...data import detection as det
from ...detect.infer import predict
from ...detect.loss import YoloLoss
from ...metrics.detection import evaluate_detections
from ...registry import create_model
from .. import distributed
from ..checkpoint import check_model_config, load_checkpoint, load_weights, require_task
from ..recipe import build_optimizer
from ..trainer import fit
from .detect_config import DetectConfig

__all__ = ["DetectConfig", "DetectTask", "build_data", "build_dataset", "evaluate",
           "load_detector", "main", "predict"]  # fmt: skip


def class_names(config: DetectConfig) -> list[str]:
    """The class names ``config`` gives (VOC's 20 by default; YOLO: names or a names file)."""
    spec = config.class_names
    if spec is None and config.data == "voc":
        return list(det.VOC_CLASSES)
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
            config.data_dir, split, classes=class_names(config), transform=transform
        )
    return det.YOLODetection(
        os.path.join(config.data_dir, split), class_names(config), transform=transform
    )


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
    # COCO keeps up to 100 detections per image *and class*; a cap over all classes would
    # drop true positives behind many confident false positives of other classes.
    num_classes = model.config["num_classes"]
    options = {
        "conf_threshold": conf_threshold,
        "nms_threshold": nms_threshold,
        "max_det": 100 * num_classes,
    }
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        items = [_ground_truth(dataset, i) for i in range(start, stop)]
        detections += predict(model, [image for image, _ in items], input_size, **options)
        truths += [gt for _, gt in items]
    return evaluate_detections(detections, truths, num_classes)


def build_model(config: DetectConfig, num_classes: int) -> nn.Module:
    """The configured detector (``yolov4_tiny`` by default) for ``num_classes`` classes."""
    options = {"attn": config.attn} if config.attn else {"phi": config.phi}
    if config.attn_kwargs:
        options["attn_kwargs"] = config.attn_kwargs
    size = config.input_size
    try:
        return create_model(
            config.model, num_classes=num_classes, input_size=(size, size), **options
        )
    except TypeError as err:  # an option the attention does not take
        raise ValueError(f"DetectConfig: {config.model} with these options: {err}") from err


def cosine_with_warmup(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warm-up, then cosine to 0."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = min(1.0, max(0.0, step - warmup) / max(1.0, total - warmup))
    return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


class DetectTask:
    """What detection adds to the trainer (see ``engine/trainer.py`` for the protocol)."""

    name, score, best_key, csv_columns = "detection", "map50", "best_map50", None

    def __init__(self, config: DetectConfig) -> None:
        self.config = config
        self.collate = collate

    def build_data(self, info: distributed.DistInfo) -> tuple[Dataset, Dataset]:
        self.train_set, self.val_set, self.classes = build_data(self.config)
        self.device = info.device
        return self.train_set, self.val_set

    def build_model(self) -> nn.Module:
        model = build_model(self.config, len(self.classes))
        self.criterion = YoloLoss.from_config(
            model.config, label_smoothing=self.config.label_smoothing
        ).to(self.device)
        self.anchors = model.config["anchors"]
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.config)  # duck-typed: optimizer, lr, momentum, decay

    def build_scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> Any:
        total, warmup = self.config.epochs * steps, self.config.warmup_epochs * steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup)
        )

    def drop_last(self, items: int, batch: int) -> bool:
        return items > batch  # a last batch of one image would break BatchNorm

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict, int]:
        images, targets = batch
        images = images.to(self.device)
        losses = self.criterion(model(images), [t.to(self.device) for t in targets])
        terms = {k: losses[k].detach() for k in ("box", "obj", "cls")}
        return losses["loss"], terms, len(images)

    def evaluate(self, model: nn.Module, info: distributed.DistInfo) -> dict[str, Any]:
        result = None
        if info.is_main:
            c = self.config
            result = evaluate(model, self.val_set, c.input_size, batch_size=c.batch_size,
                              conf_threshold=c.conf_threshold,
                              nms_threshold=c.nms_threshold)  # fmt: skip
        return distributed.broadcast_object(result, info)

    def row(self, epoch: int, train: dict, val: dict, seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "train_loss": train["loss"], "box": train["box"],
                "obj": train["obj"], "cls": train["cls"], "map50": val["map50"],
                "map": val["map"], "lr": train["lr"], "time": seconds}  # fmt: skip

    def line(self, row: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f} (box {row['box']:.3f} "
            f"obj {row['obj']:.3f} cls {row['cls']:.3f})  mAP@0.5 {row['map50']:.4f}  "
            f"mAP {row['map']:.4f}  {row['time']:.1f}s"
        )

    def extras(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "anchors": self.anchors,
                "input_size": self.config.input_size}  # fmt: skip

    def summary(
        self, model: nn.Module, val: dict, history: list, best: float, last: str, info: Any
    ) -> dict[str, Any]:
        score = -math.inf if math.isnan(val["map50"]) else val["map50"]
        return {
            "map50": val["map50"],
            "map": val["map"],
            "best_map50": max(best, score),
            "train_loss": history[-1]["train_loss"] if history else float("nan"),
            "epochs": len(history),
            "epoch_time": sum(r["time"] for r in history) / max(len(history), 1),
            "params": sum(p.numel() for p in model.parameters()),
            "out": self.config.out,
            "checkpoint": last,
            "classes": list(self.classes),
            "per_class": val["per_class"],
            "world_size": info.world_size,
        }


def main(config: DetectConfig) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; see the module docstring for what is written.

    Returns:
        Summary: map50, map (last epoch), best_map50, train_loss, epochs (completed),
        epoch_time (mean s/epoch of training), params, out, checkpoint (last.pt), classes,
        per_class, world_size.
    """
    return fit(DetectTask(config), config)


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
    require_task(checkpoint, "detection", path)
    if "model" not in checkpoint or "model_config" not in checkpoint:
        raise ValueError(f"checkpoint {os.fspath(path)} is not a detection checkpoint")
    if model is None:
        try:
            model = create_model(**checkpoint["model_config"])
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {os.fspath(path)}: its model config cannot be "
                             f"built ({str(err).splitlines()[0]})") from err  # fmt: skip
    check_model_config(model, checkpoint, os.fspath(path))
    load_weights(model, checkpoint["model"], path)
    return model.eval(), checkpoint
