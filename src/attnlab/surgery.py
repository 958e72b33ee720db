"""Insert attention into models built elsewhere, without breaking their pretrained weights.

Where attention goes (``where=``):

- ``"block"``: inside every residual block, on the output of its last norm, before the
  shortcut addition (the SE/CBAM/ECA/CA placement). Blocks are recognised by structure:
  torchvision-style BasicBlock (conv1, bn1, conv2, bn2) or Bottleneck (… conv3, bn3), or any
  module implementing the protocol ``attention_site() -> (norm_name, channels)`` (attnlab's
  own blocks do).
- ``"stage"``: on the output of every stage but the last (the BAM placement), stages being the
  root's children named ``layer<N>``, ``stage<N>`` or ``stages.<N>``.
- a list of module paths or glob patterns (``["layer2", "layer3.*.bn3"]``): on the output of
  each matching module.

Original parameter names are kept (the attention is applied by a forward hook, or appended
to an ``nn.Sequential``), so weights saved before or after insertion still load by name; the
new parameters live under ``<block>.attn.*`` or ``<module>.output_attn.*``.

With ``identity_init=True`` each inserted module is wrapped as y = x + α·(A(x) − x) with a
learnable α = 0 (modules that are already identities at init, DANet's PAM and CAM, are not
wrapped), so the model computes exactly what it did before insertion and training moves it
away from there.

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("resnet18", num_classes=10)
    >>> report = attnlab.insert_attention(model, "cbam", where="block")
    >>> len(report), report[0].path, report[0].channels
    (8, 'layer1.0', 64)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .registry import create_attention

_STAGE_NAME = re.compile(r"^(layer\d+|stage\d+|stages\.\d+)$")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Insertion:
    """One inserted attention module."""

    path: str  # the block or module it belongs to
    site: str  # the module whose output it takes
    channels: int
    attention: str  # class name of the attention module
    identity_init: bool


class InsertionReport(list):
    """The list of insertions, printable as a table."""

    def __str__(self) -> str:
        lines = [f"{'path':<24} {'site':<28} {'channels':>8}  attention"]
        for i in self:
            wrapped = " (identity init)" if i.identity_init else ""
            lines.append(f"{i.path:<24} {i.site:<28} {i.channels:>8}  {i.attention}{wrapped}")
        return "\n".join(lines)


class AttentionBlend(nn.Module):
    """y = x + α·(A(x) − x) with α = 0 at init: an identity that training moves away from.

    Args:
        attention: the attention module A.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * (self.attention(x) - x)


class _ApplyAttention:
    """Forward hook replacing a module's output by ``getattr(owner, name)(output)``."""

    def __init__(self, owner: nn.Module, name: str, path: str) -> None:
        self.owner, self.name, self.path = owner, name, path

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"insert_attention: {self.path} returns {type(output).__name__}, "
                "but attention needs a tensor output"
            )
        return getattr(self.owner, self.name)(output)


def _block_site(module: nn.Module) -> tuple[str, int] | None:
    """(norm name, channels) if ``module`` is a residual block, else None."""
    if hasattr(module, "attention_site"):
        return module.attention_site()
    children = dict(module.named_children())

    def has(kind, *names):
        return all(isinstance(children.get(n), kind) for n in names)

    if has(nn.Conv2d, "conv1", "conv2", "conv3") and has(_BatchNorm, "bn1", "bn2", "bn3"):
        return "bn3", children["bn3"].num_features
    if has(nn.Conv2d, "conv1", "conv2") and has(_BatchNorm, "bn1", "bn2"):
        return "bn2", children["bn2"].num_features
    return None


def _infer_channels(module: nn.Module, path: str) -> int:
    site = _block_site(module)
    if site is not None:
        return site[1]
    for m in reversed(list(module.modules())):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.out_channels
        if isinstance(m, _BatchNorm):
            return m.num_features
        if isinstance(m, nn.GroupNorm):
            return m.num_channels
    raise ValueError(
        f"insert_attention: cannot infer the output channels of {path!r} "
        f"({type(module).__name__}: no conv or norm inside); pass channels=…"
    )


def _build(attn, channels: int, identity_init: bool, attn_kwargs: dict) -> nn.Module:
    module = create_attention(attn, channels, **attn_kwargs)
    if module is None:
        raise ValueError(f"insert_attention: attn must name an attention module, got {attn!r}")
    if identity_init and not getattr(module, "identity_at_init", False):
        module = AttentionBlend(module)
    return module


def _resolve_paths(model: nn.Module, where: Any) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    if where == "stage":
        stages = [n for n in names if _STAGE_NAME.match(n)]
        if len(stages) < 2:
            raise ValueError(
                f"insert_attention: no stages found in {type(model).__name__} (children named "
                f"layer<N>, stage<N> or stages.<N>); pass module paths instead"
            )
        return stages[:-1]
    if isinstance(where, str) or not isinstance(where, Sequence):
        raise ValueError(
            f"insert_attention: where must be 'block', 'stage' or a list of module paths, "
            f"got {where!r}"
        )
    paths: list[str] = []
    for pattern in where:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ValueError(
                f"insert_attention: no module matches {pattern!r}; modules include "
                f"{', '.join(names[:8])}{', …' if len(names) > 8 else ''}"
            )
        paths += [n for n in matched if n not in paths]
    return paths


def insert_attention(
    model: nn.Module,
    attn: Any,
    *,
    where: str | Sequence[str] = "block",
    identity_init: bool = True,
    channels: int | None = None,
    **attn_kwargs: Any,
) -> InsertionReport:
    """Inserts attention modules into ``model`` in place.

    Args:
        model: any ``nn.Module``.
        attn: a registered attention name or class.
        where: ``"block"``, ``"stage"``, or a list of module paths / glob patterns.
        identity_init: make every insertion an identity at insertion time (see module doc).
        channels: channels of the targeted outputs, when they cannot be inferred.
        **attn_kwargs: options of the attention module.

    Returns:
        An ``InsertionReport`` (a list of ``Insertion``) of what was inserted where.

    Raises:
        ValueError: nothing to insert into, an unknown path, channels that cannot be
            inferred, or a place that already holds attention; the message names the path.
    """
    report = InsertionReport()
    modules = dict(model.named_modules())
    if where == "block":
        blocks = [(n, m, _block_site(m)) for n, m in modules.items()]
        blocks = [(n, m, s) for n, m, s in blocks if s is not None]
        if not blocks:
            raise ValueError(
                f"insert_attention: no residual blocks recognised in {type(model).__name__} "
                "(BasicBlock/Bottleneck layout with conv1/bn1/conv2/bn2[/conv3/bn3], or "
                "attention_site()); pass module paths instead"
            )
        for path, block, (site, site_channels) in blocks:
            existing = getattr(block, "attn", None)
            if existing is not None and not isinstance(existing, nn.Identity):
                raise ValueError(f"insert_attention: block {path!r} already has attention")
            module = _build(attn, site_channels, identity_init, attn_kwargs)
            if isinstance(existing, nn.Identity):  # attnlab block: its forward calls .attn
                block.attn = module
            else:
                block.add_module("attn", module)
                getattr(block, site).register_forward_hook(_ApplyAttention(block, "attn", path))
            report.append(
                Insertion(path, f"{path}.{site}", site_channels, _name(module), identity_init)
            )
        return report

    for path in _resolve_paths(model, where):
        target = modules[path]
        if isinstance(target, _CONTAINERS):
            raise ValueError(
                f"insert_attention: cannot place attention after {path!r}: "
                f"{type(target).__name__} has no forward output"
            )
        if hasattr(target, "output_attn"):
            raise ValueError(f"insert_attention: {path!r} already has output attention")
        width = channels if channels is not None else _infer_channels(target, path)
        module = _build(attn, width, identity_init, attn_kwargs)
        target.add_module("output_attn", module)
        if not isinstance(target, nn.Sequential):  # a Sequential runs it as its last module
            target.register_forward_hook(_ApplyAttention(target, "output_attn", path))
        report.append(Insertion(path, path, width, _name(module), identity_init))
    return report


def _name(module: nn.Module) -> str:
    inner = module.attention if isinstance(module, AttentionBlend) else module
    return type(inner).__name__
