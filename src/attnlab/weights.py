"""Load weights by name, with a report instead of silent missing keys.

``load_weights`` loads every tensor whose name and shape match, lists what is missing and
unexpected, names the missing keys that belong to attention modules as newly initialised (the
usual case after adding attention to a pretrained network), and refuses a shape mismatch with
a message naming the key and both shapes. Files are read with ``weights_only=True``.

Example:
    >>> import attnlab
    >>> plain = attnlab.create_model("resnet18", num_classes=10)
    >>> with_se = attnlab.create_model("resnet18", attn="se", num_classes=10)
    >>> report = attnlab.load_weights(with_se, plain.state_dict())
    >>> report.missing == [] and len(report.new_attention) == 32
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .registry import ATTENTION
from .surgery import AttentionBlend

# Keys under which common checkpoint formats nest the state dict.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass
class LoadReport:
    """What ``load_weights`` did."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not in the file, not attention
    new_attention: list[str] = field(default_factory=list)  # attention keys left at init
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for name in ("new_attention", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:6]) + (f", … ({len(keys)} in all)" if len(keys) > 6 else "")
                parts.append(f"{name.replace('_', ' ')}: {shown}")
        return "; ".join(parts)


def _read(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_weights: no such file: {path}")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"load_weights: cannot read {path}: {err}") from err
        where = path
    else:
        where = "the given state dict"
    if not isinstance(source, dict):
        raise TypeError(f"load_weights: expected a state dict in {where}, got {type(source)}")
    for key in _NESTED_KEYS:
        if isinstance(source.get(key), dict):
            source = source[key]
            break
    state = {k.removeprefix("module."): v for k, v in source.items()}  # DDP-saved weights
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"load_weights: {where} holds non-tensor entries, e.g. {bad[0]!r}")
    return state


def _attention_prefixes(model: nn.Module) -> list[str]:
    attention_classes = tuple(entry.factory for entry in map(ATTENTION.get, ATTENTION.names()))
    return [
        name + "."
        for name, m in model.named_modules()
        if name and isinstance(m, (*attention_classes, AttentionBlend))
    ]


def load_weights(model: nn.Module, state_dict_or_path: Any, *, strict: bool = False) -> LoadReport:
    """Loads matching weights into ``model`` and reports the rest.

    Args:
        model: the model to fill.
        state_dict_or_path: a state dict, a checkpoint dict holding one under ``"model"`` or
            ``"state_dict"``, or a path to a file with either (read with
            ``weights_only=True``). A ``module.`` prefix (DistributedDataParallel) is removed.
        strict: also raise when keys are missing (attention keys included) or unexpected.

    Returns:
        A ``LoadReport``.

    Raises:
        ValueError: a shape mismatch (naming the key and both shapes), or with ``strict`` any
            missing or unexpected key.
    """
    state = _read(state_dict_or_path)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"load_weights: shape mismatch for {key!r}: the model has "
                f"{tuple(own[key].shape)}, the weights have {tuple(value.shape)}"
            )
    report = LoadReport(
        loaded=[k for k in own if k in state],
        unexpected=[k for k in state if k not in own],
    )
    prefixes = _attention_prefixes(model)
    for key in own:
        if key not in state:
            is_attention = any(key.startswith(p) for p in prefixes)
            (report.new_attention if is_attention else report.missing).append(key)
    if strict and (report.missing or report.new_attention or report.unexpected):
        raise ValueError(f"load_weights (strict): {report}")
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report
