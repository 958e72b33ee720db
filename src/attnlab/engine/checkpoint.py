"""Checkpoints: state dicts only, written atomically, read with ``weights_only=True``.

A training checkpoint is a dict of tensors and plain Python values: ``model`` (state dict),
``model_config`` (rebuilds the model with ``create_model(**model_config)``), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (torch, CUDA, numpy, Python and DataLoader generator states),
``epoch`` (completed epochs), ``config`` (the TrainConfig as a dict), ``data_info`` (classes,
image size, normalisation mean/std) and ``history`` (the metrics rows so far). Nothing is a
pickled object, so loading never runs code from the file.

Example:
    >>> import os, tempfile, attnlab
    >>> from attnlab.engine.checkpoint import load_model, save_checkpoint
    >>> model = attnlab.create_model("resnet20", attn="se", num_classes=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config})
    >>> rebuilt, checkpoint = load_model(path)
    >>> rebuilt.config == model.config
    True
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from ..plain import plain  # noqa: F401  (the engine imports it from here)
from ..registry import MODELS, create_model
from .files import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` — a crash mid-write leaves the previous checkpoint intact. The file gets the
    permissions of an ordinary write (0666 minus the umask)."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint dict (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {_load_error(err)}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def _load_error(err: Exception) -> str:
    """One line for torch's multi-line loading errors; for a refused pickled object, the
    global it names (safe loading is not something to switch off for a checkpoint)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a pickled Python object ({found.group(1)}) that safe loading refuses; "
            "attnlab checkpoints hold state dicts and plain values only"
        )
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


COMMANDS = {
    "classification": "attnlab eval / attnlab predict",
    "detection": "attnlab detect eval / detect predict",
    "segmentation": "attnlab segment eval / segment predict",
}


def checkpoint_task(checkpoint: dict[str, Any]) -> str | None:
    """The task a checkpoint was trained for: ``classification``, ``detection`` or
    ``segmentation`` (stored by the trainer; older files: the model's registered task)."""
    if checkpoint.get("task"):
        return str(checkpoint["task"])
    name = (checkpoint.get("model_config") or {}).get("name")
    if name is None or name not in MODELS:
        return None
    return MODELS.get(name).metadata.get("task", "classification")


def require_task(checkpoint: dict[str, Any], task: str, path: str | os.PathLike) -> None:
    """A ValueError naming the file and the command for its task if it holds another task."""
    found = checkpoint_task(checkpoint)
    if found is not None and found != task:
        command = COMMANDS.get(found, found)
        raise ValueError(
            f"{os.fspath(path)} is not a {task} checkpoint: it holds a {found} model "
            f"(use {command})"
        )


def load_weights(model: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` with a one-line ValueError naming ``path`` when the
    weights do not fit the model (e.g. a stored config that does not match its weights)."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise ValueError(
            f"checkpoint {os.fspath(path)}: its weights do not fit its model config ({detail})"
        ) from err


def build_model_from(checkpoint: dict[str, Any], path: str | os.PathLike) -> nn.Module:
    """The model a checkpoint's ``model_config`` describes, with its weights, in eval mode."""
    for key in ("model", "model_config"):
        if key not in checkpoint:
            raise ValueError(f"checkpoint {os.fspath(path)} has no {key!r} entry")
    try:
        model = create_model(**checkpoint["model_config"])
    except (TypeError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"checkpoint {os.fspath(path)}: its model config cannot be built ({first})"
        ) from err
    load_weights(model, checkpoint["model"], path)
    return model.eval()


def config_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """``"key: found vs expected"`` for every key whose values differ (missing keys included)."""
    missing = object()
    lines = []
    for key in sorted(set(expected) | set(found), key=str):
        want, have = expected.get(key, missing), found.get(key, missing)
        if want != have:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"{key}: {show(have)} in the checkpoint vs {show(want)} here")
    return lines


def check_model_config(model: nn.Module, checkpoint: dict[str, Any], where: str) -> None:
    """Raises a ValueError listing the differing keys if ``checkpoint`` was saved for a model
    of another configuration than ``model.config``."""
    saved = checkpoint.get("model_config")
    own = getattr(model, "config", None)
    if saved is None or own is None:
        return  # nothing to compare; load_state_dict still checks names and shapes
    differences = config_differences(own, saved)
    if differences:
        raise ValueError(
            f"checkpoint {where} was saved for a different model; differing keys: "
            + "; ".join(differences)
        )


def load_model(
    path: str | os.PathLike, map_location: Any = "cpu", *, task: str | None = "classification"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model saved in a checkpoint and loads its weights.

    Args:
        path: the checkpoint.
        map_location: where tensors are loaded.
        task: refuse (ValueError) a checkpoint of another task; None: any task.

    Returns:
        (model in eval mode, the checkpoint dict).
    """
    checkpoint = load_checkpoint(path, map_location)
    if task is not None:
        require_task(checkpoint, task, path)
    return build_model_from(checkpoint, path), checkpoint


# RNG states -----------------------------------------------------------------------------------
# numpy's state is a tuple holding an ndarray, which weights_only loading refuses: it is stored
# as a tensor plus plain values instead.


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of every random generator a training step draws from."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restores what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"].cpu())
