"""``insert_attention``: attention modules added to a built network, in place.

Example:
    >>> import torch, torchvision, attnlab
    >>> model = torchvision.models.resnet18().eval()
    >>> x = torch.randn(1, 3, 64, 64)
    >>> before = model(x)
    >>> report = attnlab.insert_attention(model, "cbam", where="block")
    >>> len(report), report[0].site, report[0].channels
    (8, 'layer1.0.bn2', 64)
    >>> bool(torch.allclose(model(x), before, rtol=1e-5, atol=1e-6))  # identity at insertion
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import ATTENTION, create_attention
from .blend import ApplyToInput, ApplyToOutput, AttentionBlend, ReplaceOutput
from .sites import BlockSite, block_site, find_blocks, infer_channels
from .stages import find_stages, match_paths

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Insertion:
    """One inserted attention module.

    Attributes:
        path: the block or module it belongs to (its parameters live under ``path``).
        site: the module whose output (or input, ``hook == "input"``) it takes.
        channels: channels it acts on.
        attention: class name of the attention module.
        identity_init: whether it starts as an identity (``AttentionBlend``).
        hook: ``"output"``, ``"input"`` or ``"slot"`` (an attnlab block's own ``attn``).
        existing_se: the block's own squeeze-excitation module, if it has one.
        replaced: whether the attention replaces ``existing_se`` (``replace_se=True``).
        module: path of the inserted module itself (its keys start with ``module + "."``).
    """

    path: str
    site: str
    channels: int
    attention: str
    identity_init: bool
    hook: str = "output"
    existing_se: str | None = None
    replaced: bool = False
    module: str = ""


class InsertionReport(list):
    """The list of insertions, printable as a table."""

    def __str__(self) -> str:
        lines = [f"{'path':<24} {'site':<30} {'channels':>8}  attention"]
        for i in self:
            notes = [" (identity init)" if i.identity_init else ""]
            if i.hook == "input":
                notes.append(" (on its input)")
            if i.existing_se and i.replaced:
                notes.append(f" (replaces {i.existing_se})")
            elif i.existing_se:
                notes.append(f" (block has SE {i.existing_se}; replace_se=True replaces it)")
            lines.append(f"{i.path:<24} {i.site:<30} {i.channels:>8}  {i.attention}"
                         + "".join(notes))  # fmt: skip
        return "\n".join(lines)


def _skip_types() -> tuple[type, ...]:
    """Classes never searched for blocks: attention modules, inserted or registered."""
    registered = [ATTENTION.get(n).factory for n in ATTENTION.names()]
    return (AttentionBlend, *[f for f in registered if isinstance(f, type)])


def _build(attn: Any, channels: int, identity_init: bool, attn_kwargs: dict) -> nn.Module:
    module = create_attention(attn, channels, **attn_kwargs)
    if module is None:
        raise ValueError(f"insert_attention: attn must name an attention module, got {attn!r}")
    if identity_init and not getattr(module, "identity_at_init", False):
        module = AttentionBlend(module)
    return module


def _name(module: nn.Module) -> str:
    inner = module.attention if isinstance(module, AttentionBlend) else module
    return type(inner).__name__


def _join(path: str, child: str) -> str:
    return ".".join(p for p in (path, child) if p)


def _insert_in_block(
    block: nn.Module, s: BlockSite, build: Any, identity_init: bool, replace_se: bool
) -> Insertion:
    existing = getattr(block, "attn", None)
    if s.hook == "slot":
        if existing is not None and not isinstance(existing, nn.Identity):
            raise ValueError(f"insert_attention: block {s.path!r} already has attention")
        block.attn = module = build(s.channels)
        return Insertion(s.path, _join(s.path, s.site), s.channels, _name(module), identity_init,
                         "slot", module=_join(s.path, "attn"))  # fmt: skip
    name = "attn" if existing is None else "inserted_attn"
    if hasattr(block, name) or not isinstance(existing, (nn.Identity, type(None))):
        raise ValueError(
            f"insert_attention: block {s.path!r} already has attention ({name}); pass "
            "where=[module paths] to add attention elsewhere"
        )
    if replace_se and s.se is not None:
        module = build(s.se_channels)
        block.add_module(name, module)
        site = _join(s.path, s.se)
        block.get_submodule(s.se).register_forward_hook(
            ReplaceOutput(block, name, s.se_channels, site)
        )
        return Insertion(s.path, site, s.se_channels, _name(module), identity_init, "output",
                         site, True, _join(s.path, name))  # fmt: skip
    module = build(s.channels)
    block.add_module(name, module)
    target = block.get_submodule(s.site) if s.site else block
    site = _join(s.path, s.site)
    if s.hook == "input":
        target.register_forward_pre_hook(ApplyToInput(block, name, s.channels, site))
    else:
        target.register_forward_hook(ApplyToOutput(block, name, s.channels, site))
    se = _join(s.path, s.se) if s.se else None
    return Insertion(s.path, site, s.channels, _name(module), identity_init, s.hook, se,
                     module=_join(s.path, name))  # fmt: skip


def _iterates_children(module: nn.Module) -> bool:
    """A container whose own forward runs every child (a DenseNet block): a new child would
    be run as one of its layers."""
    if isinstance(module, nn.Sequential):
        return type(module).forward is not nn.Sequential.forward
    return isinstance(module, _CONTAINERS)


def _insert_after(
    model: nn.Module, target: nn.Module, path: str, width: int, build: Any, identity_init: bool
) -> Insertion:
    if isinstance(target, _CONTAINERS) and type(target).forward is nn.Module.forward:
        raise ValueError(
            f"insert_attention: cannot place attention after {path!r}: "
            f"{type(target).__name__} has no forward output; pass the paths of its entries"
        )
    owner, name = target, "output_attn"
    if _iterates_children(target):
        # Kept on the nearest ancestor that is not a container, under a name made of the path.
        parts = path.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            owner = model.get_submodule(".".join(parts[:cut]))
            if not isinstance(owner, (nn.Sequential, *_CONTAINERS)):
                break
        else:
            raise ValueError(
                f"insert_attention: cannot place attention after {path!r}: it runs its own "
                "children and every ancestor is a container; pass the path of its last layer"
            )
        name = "output_attn_" + "_".join(parts[cut:])
    if hasattr(owner, name):
        raise ValueError(f"insert_attention: {path!r} already has output attention")
    module = build(width)
    owner.add_module(name, module)
    if owner is not target or not isinstance(target, nn.Sequential):
        target.register_forward_hook(ApplyToOutput(owner, name, width, path))
    # (a plain Sequential runs its new last module itself)
    owner_path = next(n for n, m in model.named_modules() if m is owner)
    return Insertion(
        path, path, width, _name(module), identity_init, module=_join(owner_path, name)
    )


def _no_blocks_message(model: nn.Module) -> str:
    tops = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    return (
        f"insert_attention: no residual blocks recognised in {type(model).__name__} (a block's "
        "forward adds its input to a branch of layers, BasicBlock/Bottleneck/inverted residual/"
        "ConvNeXt alike); pass where='stage' or where=[module paths] "
        f"(top-level modules: {', '.join(tops[:8]) or 'none'})"
    )


def insert_attention(
    model: nn.Module,
    attn: Any,
    *,
    where: str | Sequence[str] = "block",
    identity_init: bool = True,
    channels: int | None = None,
    replace_se: bool = False,
    **attn_kwargs: Any,
) -> InsertionReport:
    """Inserts attention modules into ``model`` in place.

    Args:
        model: any ``nn.Module``: attnlab's, torchvision's, timm's or your own.
        attn: a registered attention name or class.
        where: ``"block"`` (on every residual branch, before the addition), ``"stage"`` (after
            every stage but the last), or a list of module paths / glob patterns (``*`` within
            one path segment, ``**`` across any number); a path naming a residual block puts the
            attention on its branch, any other path on the module's output.
        identity_init: make every insertion an identity at insertion time (``AttentionBlend``).
        channels: channels of the targeted outputs of explicit paths, when not inferable.
        replace_se: in blocks with their own squeeze-excitation (MobileNetV3, EfficientNet,
            RegNetY), put the attention in the SE's place instead of on the branch's end: the
            SE's output s becomes s + α·(A(x) − s), α = 0 at insertion (A(x) outright with
            ``identity_init=False``); the SE's weights stay, so its keys still load.
        **attn_kwargs: options of the attention module.

    Returns:
        An ``InsertionReport`` (a list of ``Insertion``) of what was inserted where.

    Raises:
        ValueError: nothing to insert into, an unknown path, channels that cannot be
            inferred, or a place that already holds attention; the message names the path
            and what to pass instead.
    """
    report = InsertionReport()

    def build(width: int) -> nn.Module:  # in the model's mode: an eval model stays in eval
        return _build(attn, width, identity_init, attn_kwargs).train(model.training)

    if attn is None or attn is False or attn in ("", "none"):
        raise ValueError(f"insert_attention: attn must name an attention module, got {attn!r}")
    if where == "block":
        blocks = find_blocks(model, _skip_types())
        if not blocks:
            raise ValueError(_no_blocks_message(model))
        for s in blocks:
            block = model.get_submodule(s.path)
            report.append(_insert_in_block(block, s, build, identity_init, replace_se))
        return report
    if where == "stage":
        stages = find_stages(model)
        if not stages:
            raise ValueError(
                f"insert_attention: no stages found in {type(model).__name__} (no feature_info, "
                "and no feature-map size runs in a probe forward); pass module paths instead"
            )
        for path, width in stages:
            target = model.get_submodule(path)
            report.append(_insert_after(model, target, path, width, build, identity_init))
        return report
    if isinstance(where, str) or not isinstance(where, Sequence):
        raise ValueError(
            f"insert_attention: where must be 'block', 'stage' or a list of module paths, "
            f"got {where!r}"
        )
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    paths: list[str] = []
    for pattern in where:
        matched = match_paths(names, pattern)
        if not matched:
            raise ValueError(
                f"insert_attention: no module matches {pattern!r} (* matches within one "
                f"dot-separated segment, ** across any); modules include "
                f"{', '.join(names[:8])}{', …' if len(names) > 8 else ''}"
            )
        paths += [n for n in matched if n not in paths]
    skip = _skip_types()
    for path in paths:
        target = modules[path]
        site = None if isinstance(target, skip) else _explicit_block(target, path)
        if site is not None:
            report.append(_insert_in_block(target, site, build, identity_init, replace_se))
            continue
        width = channels if channels is not None else infer_channels(target)
        if width is None:
            raise ValueError(
                f"insert_attention: cannot infer the output channels of {path!r} "
                f"({type(target).__name__}: no conv, norm or linear inside); pass channels=…"
            )
        report.append(_insert_after(model, target, path, width, build, identity_init))
    return report


def _explicit_block(module: nn.Module, path: str) -> BlockSite | None:
    if hasattr(module, "attention_site"):
        norm, width = module.attention_site()
        return BlockSite(path, norm, "slot", width)
    if isinstance(module, (nn.Sequential, *_CONTAINERS)) or not list(module.children()):
        return None
    return block_site(module, path)
