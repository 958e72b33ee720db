"""The training loop every task shares: a short loop a reader can hold in their head (nanoGPT).

``fit(task, config)`` runs a task object (classification, detection or segmentation; see
``engine/tasks/``) through its epochs: it builds the data and the model through the task,
trains with the task's loss (mixed precision, gradient clipping, a per-iteration learning-rate
schedule, a progress bar), evaluates after every epoch, appends the epoch's row to
``metrics.jsonl``, and writes ``last.pt`` and ``best.pt``. Under torchrun every process trains
on its shard of each global batch through DistributedDataParallel; rank 0 writes the files.

A task object provides: ``name`` (its task), ``score`` (the metric row's key best.pt follows),
``best_key`` (where checkpoints record the best score), ``csv_columns`` (or None),
``build_data(info)`` → (train set, val set), ``build_model()``, ``build_optimizer(model)``,
``build_scheduler(optimizer, steps_per_epoch)``, ``collate`` (or None), ``drop_last(n)``,
``loss(model, batch, device)`` → (loss, {term: value}, samples), ``evaluate(model, info)`` →
the row's validation fields, ``check_resume(checkpoint)``, ``extras()`` (checkpoint entries),
``line(row)`` (the printed epoch line) and ``summary(last, history, best)``.

Crash safety (see ``rundir.py`` for the folder rules): ``best.pt`` is written before
``last.pt``, and a resumed run takes its best score from ``best.pt`` when that is higher, so
``best.pt`` and the best score a run reports always agree, whenever a crash came.

Example:
    >>> import tempfile, torch
    >>> from torch.utils.data import TensorDataset
    >>> from attnlab.engine.config import TrainConfig
    >>> from attnlab.engine.tasks.classify import ClassifyTask
    >>> from attnlab.engine.trainer import fit
    >>> images, labels = torch.rand(16, 3, 8, 8), torch.arange(16) % 2
    >>> data = (TensorDataset(images, labels), TensorDataset(images, labels), {"num_classes": 2})
    >>> config = TrainConfig(epochs=1, batch_size=8, progress=False, out=tempfile.mkdtemp())
    >>> fit(ClassifyTask(config, datasets=data), config)["epochs"]
    1
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .checkpoint import (
    check_model_config,
    load_checkpoint,
    require_task,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .metrics_log import MetricsLog
from .runconfig import RunConfig
from .rundir import RunFolder


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``bf16``/``fp16`` autocast on ``device``, or nothing for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def progress_bar(loader: DataLoader, show: bool, desc: str) -> tqdm:
    """A tqdm bar over ``loader`` (off unless ``show``; off when stderr is not a terminal)."""
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if show else True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    *,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: bool = False,
    desc: str = "train",
    info: distributed.DistInfo | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; ``scheduler`` (if any) steps after every optimiser step.

    Args:
        loss_fn: ``loss_fn(model, batch)`` → (loss, {term: value}, samples in the batch).

    Returns:
        {"loss", each term: means over all processes' samples, "lr": the rate of the last step}.
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    count = 0.0
    lr = optimizer.param_groups[0]["lr"]
    bar = progress_bar(loader, progress, desc)
    for step, batch in enumerate(bar):
        loss, terms, samples = loss_fn(model, batch)
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
        # Sums stay on the loss's device: no host synchronisation per step.
        for key, value in {"loss": loss, **terms}.items():
            value = torch.as_tensor(value, device=loss.device).detach().double() * samples
            sums[key] = sums[key] + value if key in sums else value
        count += samples
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    totals = torch.stack([*(v.cpu() for v in sums.values()), torch.tensor(count).double()])
    if info is not None and info.distributed:
        totals = distributed.all_reduce_sum(totals.to(info.device), info).cpu()
    means = (totals[:-1] / max(float(totals[-1]), 1.0)).tolist()
    return {**dict(zip(sums, means, strict=True)), "lr": lr}


@contextlib.contextmanager
def isolated_global_state(deterministic: bool) -> Iterator[None]:
    """Sets what a (deterministic) run needs and restores every touched global afterwards."""
    saved = {
        "rng": rng_state(),
        "det": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "threads": torch.get_num_threads(),
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
        torch.set_num_threads(saved["threads"])
        set_rng_state(saved["rng"])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and random follow torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def fit(task: Any, config: RunConfig) -> dict[str, Any]:
    """Trains ``task`` as ``config`` says; returns the task's summary (see the module docstring).

    Raises:
        FileNotFoundError: ``config.resume`` names no file.
        ValueError: bad data, a refused run folder, a checkpoint of another task or model, or
            resume settings that differ from the checkpoint's (without ``allow_changes``).
    """
    if config.resume and not os.path.isfile(config.resume):
        raise FileNotFoundError(f"checkpoint to resume from not found: {config.resume}")
    with isolated_global_state(config.deterministic):
        if getattr(config, "threads", None):
            torch.set_num_threads(config.threads)
        info = distributed.setup(getattr(config, "device", "auto"))
        try:
            return _fit(task, config, info)
        finally:
            distributed.teardown(info)


def _fit(task: Any, config: Any, info: distributed.DistInfo) -> dict[str, Any]:
    device = info.device
    say = print if config.progress and info.is_main else lambda *a: None
    if getattr(config, "amp", "none") == "fp16" and device.type != "cuda":
        raise ValueError(f"{type(config).__name__}.amp: fp16 needs a CUDA device (here: {device})")
    if config.batch_size % info.world_size:
        raise ValueError(
            f"{type(config).__name__}.batch_size: {config.batch_size} does not split over "
            f"{info.world_size} processes"
        )
    for seed_all in (torch.manual_seed, np.random.seed, random.seed):
        seed_all(config.seed)
    train_set, val_set = task.build_data(info)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"data {config.data!r}: the training or validation set is empty")
    model = task.build_model().to(device)
    if info.rank:
        torch.manual_seed(config.seed + info.rank)  # own augmentation stream per process
    optimizer = task.build_optimizer(model)
    per_rank = config.batch_size // info.world_size
    generator = torch.Generator().manual_seed(config.seed + info.rank)
    sampler = distributed.train_sampler(train_set, info, config.seed)
    train_loader = DataLoader(
        train_set, per_rank, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", worker_init_fn=seed_worker, generator=generator,
        collate_fn=task.collate, drop_last=task.drop_last(len(sampler), per_rank),
    )  # fmt: skip
    if len(train_loader) == 0:
        raise ValueError(
            f"{type(config).__name__}.batch_size: {config.batch_size} is larger than the "
            f"training set ({len(train_set)} items)"
        )
    scheduler = task.build_scheduler(optimizer, len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=getattr(config, "amp", "none") == "fp16")

    start, history, best = 0, [], -math.inf
    if config.resume:
        checkpoint = load_checkpoint(config.resume, map_location=device)
        _check_resume(task, config, model, checkpoint, len(train_set), say)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        start, history = checkpoint["epoch"], list(checkpoint["history"])
        best = _score(checkpoint.get(task.best_key))
        states = checkpoint["rng"]
        states = states if isinstance(states, list) else [states]
        if info.rank < len(states):
            set_rng_state(states[info.rank], generator)
        say(f"resumed from {config.resume} after epoch {start}")
    net = distributed.wrap_model(model, info)

    folder = _open_folder(config, info)
    try:
        log = MetricsLog(config.out, task.csv_columns)
        best_path, last_path = (os.path.join(config.out, n) for n in ("best.pt", "last.pt"))
        if info.is_main:
            best = max(best, _best_on_disk(best_path, task.best_key, device))
            config.save(os.path.join(config.out, "config.yaml"))
            log.reset(history)
        best = _broadcast_float(best, info)
        loss_fn = task.loss
        val = None
        for epoch in range(start + 1, config.epochs + 1):
            sampler.set_epoch(epoch)
            started = time.perf_counter()
            train = train_one_epoch(
                net, train_loader, optimizer, loss_fn, scheduler=scheduler, scaler=scaler,
                grad_clip=getattr(config, "grad_clip", None), info=info,
                progress=config.progress and info.is_main, desc=f"epoch {epoch}/{config.epochs}",
            )  # fmt: skip
            seconds = time.perf_counter() - started
            # The unwrapped model: DDP's forward is collective, evaluation is not.
            val = task.evaluate(model, info)
            row = task.row(epoch, train, val, seconds)
            history.append(row)
            say(task.line(row, config.epochs))
            if info.is_main:
                log.append(row)
            score = _score(row[task.score])
            improved = score > best
            best = max(best, score)
            due = epoch == config.epochs or (config.save_every and epoch % config.save_every == 0)
            if not (due or improved):
                continue
            states = _gather_rng(generator, info)  # collective: every rank takes part
            if not info.is_main:
                continue
            checkpoint = {
                "task": task.name, "model": model.state_dict(), "model_config": model.config,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": states, "epoch": epoch,
                "config": config.to_dict(), "history": history, task.best_key: best,
                "train_items": len(train_set), **task.extras(),
            }  # fmt: skip
            # best.pt first: a crash between the two writes leaves a best.pt at least as good
            # as the best score last.pt records, and a resume adopts best.pt's score.
            if improved:
                save_checkpoint(best_path, checkpoint)
            if due:
                save_checkpoint(last_path, checkpoint)
        if val is None:  # nothing left to train (resumed at the end): the weights as they are
            val = task.evaluate(model, info)
        distributed.barrier(info)
    finally:
        folder.release()
    return task.summary(model, val, history, best, last_path, info)


def _score(value: Any) -> float:
    """A score for best.pt; NaN and absent scores never count as an improvement."""
    if value is None:
        return -math.inf
    value = float(value)
    return -math.inf if math.isnan(value) else value


def _best_on_disk(path: str, key: str, device: torch.device) -> float:
    """The best score recorded in an existing best.pt of this folder (``-inf`` if none)."""
    if not os.path.isfile(path):
        return -math.inf
    return _score(load_checkpoint(path, map_location="cpu").get(key))


def _check_resume(
    task: Any, config: Any, model: nn.Module, checkpoint: dict, train_items: int, say: Any
) -> None:
    require_task(checkpoint, task.name, config.resume)
    check_model_config(model, checkpoint, config.resume)
    changes = config.changes_from(checkpoint.get("config") or {})
    saved_items = checkpoint.get("train_items")
    if saved_items is not None and saved_items != train_items:
        changes.append(f"training items: {saved_items} → {train_items}")
    if not changes:
        return
    listed = "; ".join(changes)
    if not config.allow_changes:
        raise ValueError(
            f"--resume {config.resume}: settings differ from the checkpoint's ({listed}); "
            "pass --allow-changes to resume with them"
        )
    say(f"resuming with changed settings: {listed}")


def _open_folder(config: Any, info: distributed.DistInfo) -> RunFolder:
    """Rank 0 takes the run folder; every rank raises the same one-line error if refused."""
    folder = RunFolder(config.out, resume=config.resume, overwrite=config.overwrite)
    error = None
    if info.is_main:
        try:
            folder.__enter__()
        except ValueError as err:
            error = str(err)
    error = distributed.broadcast_object(error, info)
    if error is not None:
        raise ValueError(error)
    return folder


def _broadcast_float(value: float, info: distributed.DistInfo) -> float:
    return float(distributed.broadcast_object(value, info))


def _gather_rng(generator: torch.Generator, info: distributed.DistInfo) -> list[dict]:
    """Every process's RNG states, indexed by rank (resume restores each its own)."""
    state = rng_state(generator)
    if not info.distributed:
        return [state]
    states: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states
