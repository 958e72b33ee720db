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
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from .._plain import plain  # noqa: F401  (the engine imports it from here)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` — a crash mid-write leaves the previous checkpoint intact."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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
        # torch's unpickling errors run to a dozen lines of advice; the CLI shows one line.
        lines = str(err).strip().splitlines()
        raise ValueError(f"cannot read checkpoint {path}: {lines[0] if lines else err!r}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


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
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model saved in a checkpoint and loads its weights.

    Returns:
        (model in eval mode, the checkpoint dict).
    """
    from ..registry import create_model

    checkpoint = load_checkpoint(path, map_location)
    for key in ("model", "model_config"):
        if key not in checkpoint:
            raise ValueError(f"checkpoint {os.fspath(path)} has no {key!r} entry")
    model = create_model(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


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
