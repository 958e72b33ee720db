"""Image-classification training: a short loop a reader can hold in their head (after nanoGPT).

``main(config)`` builds the data, the model and the optimiser from a ``TrainConfig``, trains
for ``config.epochs`` epochs, evaluates after each, and writes to ``config.out``:
``config.yaml`` (the resolved config), ``metrics.jsonl`` and ``metrics.csv`` (one row per
epoch: epoch, train_loss, val_loss, val_acc, lr, time), ``last.pt`` (everything needed to
resume exactly) and ``best.pt`` (the epoch with the best validation accuracy).

Recipe details (model, optimiser and schedule: ``recipe.py``):
- Weight decay on weights of rank ≥ 2 only; linear warm-up then cosine or steps, per iteration.
- Mixed precision: ``bf16`` autocast on CPU or CUDA, ``fp16`` on CUDA with a GradScaler.
- Validation loss is plain cross-entropy (no label smoothing), comparable across recipes.
- ``main`` restores the global state it touches (RNG states, deterministic-algorithm flags,
  cuDNN flags), so ``attnlab compare`` can call it many times in one process.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from attnlab.engine.config import TrainConfig
    >>> from attnlab.engine.train import main
    >>> images, labels = torch.rand(16, 3, 8, 8), torch.arange(16) % 2
    >>> data = (TensorDataset(images, labels), TensorDataset(images, labels), {"num_classes": 2})
    >>> import tempfile
    >>> config = TrainConfig(epochs=1, batch_size=8, progress=False, out=tempfile.mkdtemp())
    >>> summary = main(config, datasets=data)
    >>> summary["epochs"], 0.0 <= summary["val_acc"] <= 1.0
    (1, True)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import (
    check_model_config,
    load_checkpoint,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .recipe import build_model, build_optimizer, build_scheduler

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "time")


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def _bar(loader: DataLoader, show: bool, desc: str):
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal.
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if show else True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    loss_fn: nn.Module | None = None,
    device: torch.device | str = "cpu",
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "train",
    info: distributed.DistInfo | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; ``scheduler`` (if any) steps after every optimiser step.

    Returns:
        {"loss": mean training loss over all processes' samples, "lr": the learning rate of
        the epoch's last step}.
    """
    device = torch.device(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss × n, n
    bar = _bar(loader, progress, desc)
    lr = optimizer.param_groups[0]["lr"]
    for step, (images, labels) in enumerate(bar):
        images = _layout(images.to(device, non_blocking=True), channels_last)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        if scheduler is not None:
            scheduler.step()
        sums += torch.stack([loss.detach().double() * len(labels), sums.new_tensor(len(labels))])
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if info is not None:
        distributed.all_reduce_sum(sums, info)
    loss_sum, count = sums.tolist()
    return {"loss": loss_sum / max(count, 1), "lr": lr}


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
        images, labels = _layout(images.to(device), channels_last), labels.to(device)
        with _autocast(device, amp):
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


@contextlib.contextmanager
def isolated_global_state(deterministic: bool) -> Iterator[None]:
    """Sets what a (deterministic) run needs and restores every touched global afterwards."""
    saved = {
        "rng": rng_state(),
        "det": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    try:
        if deterministic:
            # cuBLAS needs a fixed workspace for reproducible results (CUDA docs).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        yield
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(saved["det"], warn_only=saved["warn_only"])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved["cudnn"]
            if saved["cublas"] is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]
        set_rng_state(saved["rng"])


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker (base seed + id); numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _load_data(config: TrainConfig, info: distributed.DistInfo) -> tuple:
    from ..data import build_datasets  # lazily: the data package imports heavier modules

    # Rank 0 first (it may download); the others then read what it wrote.
    if not info.is_main:
        distributed.barrier(info)
    try:
        return build_datasets(
            config.data, data_dir=config.data_dir, image_size=config.image_size,
            train_size=config.train_size, val_size=config.val_size,
            difficulty=config.difficulty, seed=config.data_seed, download=config.download,
        )  # fmt: skip
    finally:
        if info.is_main:
            distributed.barrier(info)


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
    if config.resume and not os.path.isfile(config.resume):
        raise FileNotFoundError(f"checkpoint to resume from not found: {config.resume}")
    with isolated_global_state(config.deterministic):
        info = distributed.setup(config.device)
        try:
            return _run(config, info, datasets)
        finally:
            distributed.teardown(info)


def _run(config: TrainConfig, info: distributed.DistInfo, datasets: tuple | None) -> dict:
    device, say = info.device, (print if config.progress and info.is_main else lambda *a: None)
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"TrainConfig.amp: fp16 needs a CUDA device (this run: {device}); use bf16"
        )
    if config.batch_size % info.world_size:
        raise ValueError(
            f"TrainConfig.batch_size: {config.batch_size} does not split over "
            f"{info.world_size} processes"
        )
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    train_set, val_set, data_info = datasets if datasets is not None else _load_data(config, info)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"data {config.data!r}: the training or validation set is empty")
    model = build_model(config, data_info).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if info.rank:
        torch.manual_seed(config.seed + info.rank)  # own augmentation stream per process
    optimizer = build_optimizer(model, config)

    per_rank = config.batch_size // info.world_size
    generator = torch.Generator().manual_seed(config.seed + info.rank)
    sampler = distributed.train_sampler(train_set, info, config.seed)
    loader_options = {"num_workers": config.workers, "pin_memory": device.type == "cuda",
                      "worker_init_fn": _seed_worker, "generator": generator}  # fmt: skip
    train_loader = DataLoader(train_set, per_rank, sampler=sampler, **loader_options)
    val_loader = DataLoader(
        val_set, per_rank, sampler=distributed.ShardSampler(val_set, info), **loader_options
    )
    steps = len(train_loader)
    scheduler = build_scheduler(optimizer, config, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start, history, best = 0, [], -1.0
    if config.resume:
        checkpoint = load_checkpoint(config.resume, map_location=device)
        check_model_config(model, checkpoint, config.resume)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        start, history = checkpoint["epoch"], list(checkpoint["history"])
        best = checkpoint.get("best_val_acc", -1.0)
        states = checkpoint["rng"]
        if info.rank < len(states):
            set_rng_state(states[info.rank], generator)
        say(f"resumed from {config.resume} after epoch {start}")
    net = distributed.wrap_model(model, info)

    out = config.out
    if info.is_main:
        os.makedirs(out, exist_ok=True)
        config.save(os.path.join(out, "config.yaml"))
    data_info = plain(data_info)
    last_path = os.path.join(out, "last.pt")
    val = None
    for epoch in range(start + 1, config.epochs + 1):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        train = train_one_epoch(
            net, train_loader, optimizer, scheduler=scheduler, loss_fn=loss_fn, device=device,
            amp=config.amp, scaler=scaler, grad_clip=config.grad_clip, info=info,
            channels_last=config.channels_last,
            progress=config.progress and info.is_main, desc=f"epoch {epoch}/{config.epochs}",
        )  # fmt: skip
        seconds = time.perf_counter() - started
        # The unwrapped model: shards may differ in length, and DDP's forward is collective.
        val = evaluate(
            model, val_loader, device, amp=config.amp, info=info, channels_last=config.channels_last
        )
        row = {"epoch": epoch, "train_loss": train["loss"], "val_loss": val["loss"],
               "val_acc": val["acc"], "lr": train["lr"], "time": seconds}  # fmt: skip
        history.append(row)
        say(
            f"epoch {epoch}/{config.epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
            f"lr {row['lr']:.3g}  {seconds:.1f}s"
        )
        if info.is_main:
            _write_metrics(out, history)
        improved = val["acc"] > best
        best = max(best, val["acc"])
        due = epoch == config.epochs or (config.save_every and epoch % config.save_every == 0)
        if not (due or improved):
            continue
        states = _gather_rng(generator, info)  # collective: every rank takes part
        if not info.is_main:
            continue
        checkpoint = {
            "model": model.state_dict(), "model_config": model.config,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": states, "epoch": epoch,
            "config": config.to_dict(), "data_info": data_info, "history": history,
            "best_val_acc": best,
        }  # fmt: skip
        if due:
            save_checkpoint(last_path, checkpoint)
        if improved:
            save_checkpoint(os.path.join(out, "best.pt"), checkpoint)
    if val is None:  # nothing left to train (resumed at the end): report the weights as they are
        val = evaluate(
            model, val_loader, device, amp=config.amp, info=info, channels_last=config.channels_last
        )
        if info.is_main:
            _write_metrics(out, history)
    distributed.barrier(info)
    return {
        "val_acc": val["acc"],
        "val_loss": val["loss"],
        "best_val_acc": max(best, val["acc"]),
        "train_loss": history[-1]["train_loss"] if history else float("nan"),
        "epochs": len(history),
        "epoch_time": float(np.mean([r["time"] for r in history])) if history else 0.0,
        "params": sum(p.numel() for p in model.parameters()),
        "out": out,
        "model_config": model.config,
        "image_size": data_info.get("image_size"),
        "checkpoint": last_path,
        "world_size": info.world_size,
        "device": str(device),
    }


def _gather_rng(generator: torch.Generator, info: distributed.DistInfo) -> list[dict]:
    """Every process's RNG states, indexed by rank (resume restores each its own)."""
    state = rng_state(generator)
    if not info.distributed:
        return [state]
    states: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _write_metrics(out: str, history: list[dict[str, Any]]) -> None:
    """Rewrites metrics.jsonl and metrics.csv from the whole history (resume-safe)."""
    with open(os.path.join(out, "metrics.jsonl"), "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in history)
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
