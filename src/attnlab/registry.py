"""One small registry for named components: attention modules and models.

A registry maps short names to factories plus metadata. Registering a name twice raises, and
looking up an unknown name raises a ValueError that lists the valid ones.

Example:
    >>> import attnlab
    >>> attnlab.list_attention("channel")
    ['eca', 'ese', 'fca', 'se', 'sk', 'srm']
    >>> cbam = attnlab.create_attention("cbam", 256, preset="paper")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ATTENTION_KINDS = ("channel", "spatial", "hybrid", "self-attention")


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, factory and metadata."""

    name: str
    factory: Callable[..., Any]
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name → factory map that refuses duplicates.

    Args:
        kind: what is registered ("attention", "model"), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[Callable], Callable]:
        """Decorator registering a class or function under ``name``."""
        if not isinstance(name, str) or not name or name != name.strip().lower():
            raise ValueError(f"{self.kind} registry: names are non-empty lower case, got {name!r}")

        def decorator(factory: Callable) -> Callable:
            if name in self._entries:
                existing = self._entries[name].factory
                raise ValueError(
                    f"{self.kind} registry: {name!r} is already registered "
                    f"(to {existing.__module__}.{existing.__qualname__})"
                )
            self._entries[name] = Entry(name, factory, dict(metadata))
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        """The entry for ``name``; ValueError listing valid names if unknown."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self, **filters: Any) -> list[str]:
        """Sorted names, optionally only those whose metadata match ``filters``."""
        return sorted(
            name
            for name, entry in self._entries.items()
            if all(entry.metadata.get(k) == v for k, v in filters.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


ATTENTION = Registry("attention")
MODELS = Registry("model")
MODEL_SOURCES = Registry("model source")  # "tv", "timm": names "<source>:<model>"


def register_attention(
    name: str, *, paper: str, arxiv: str, year: int, kind: str
) -> Callable[[Callable], Callable]:
    """Registers an attention module class under a short name with its paper's metadata.

    Args:
        name: short name used by ``create_attention``, the CLI and model options.
        paper: paper title (and venue).
        arxiv: arXiv identifier.
        year: publication year.
        kind: one of ``"channel"``, ``"spatial"``, ``"hybrid"``, ``"self-attention"``.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"register_attention: kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    return ATTENTION.register(name, paper=paper, arxiv=arxiv, year=year, kind=kind)


def list_attention(kind: str | None = None) -> list[str]:
    """Names of the registered attention modules, optionally of one ``kind``."""
    if kind is None:
        return ATTENTION.names()
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"list_attention: kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    return ATTENTION.names(kind=kind)


def attention_info(name: str) -> dict[str, Any]:
    """Metadata of a registered module: name, class, paper, arxiv, year, kind."""
    entry = ATTENTION.get(name)
    return {"name": entry.name, "class": entry.factory.__name__, **entry.metadata}


def create_attention(
    attn: str | type[nn.Module] | Callable[..., nn.Module] | None, channels: int, **kwargs: Any
) -> nn.Module | None:
    """Builds an attention module for ``channels`` input channels.

    Args:
        attn: a registered short name (``"se"``, ``"cbam"``, …), a module class or any callable
            taking ``(channels, **kwargs)``; ``None``, ``False``, ``""`` or ``"none"`` mean no
            attention and return None.
        channels: input channels.
        **kwargs: keyword options of the module (e.g. ``preset="paper"``, ``rd_ratio=1/8``).

    Returns:
        The module, or None when ``attn`` asks for no attention.
    """
    if attn is None or attn is False or attn == "" or attn == "none":
        return None
    if isinstance(attn, str):
        factory = ATTENTION.get(attn).factory
    elif isinstance(attn, nn.Module):
        raise TypeError(
            "create_attention: pass a name or a class, not a module instance "
            f"({type(attn).__name__})"
        )
    elif callable(attn):
        factory = attn
    else:
        raise TypeError(
            f"create_attention: attn must be a name, a class or None, got {type(attn).__name__}"
        )
    module = factory(channels, **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"create_attention: {attn!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module


def register_model(name: str, **metadata: Any) -> Callable[[Callable], Callable]:
    """Registers a model factory under ``name``; the factory returns a model with ``config``."""
    return MODELS.register(name, **metadata)


def list_models(**filters: Any) -> list[str]:
    """Names of the registered models, optionally filtered by metadata (e.g. family="resnet")."""
    return MODELS.names(**filters)


def list_classifiers() -> list[str]:
    """Models the classification engine can train: ``task="classification"`` or no task given
    (a user's own registration); detectors and segmenters declare their task."""
    return sorted(
        name
        for name in MODELS.names()
        if MODELS.get(name).metadata.get("task", "classification") == "classification"
    )


def register_model_source(prefix: str, *, check: Callable[[str], None]) -> Callable:
    """Registers a factory ``factory(name, *, attn=None, **kw)`` for ``"<prefix>:<name>"``
    model names; ``check(name)`` raises a ValueError for names the source does not have."""
    return MODEL_SOURCES.register(prefix, check=check)


def check_model_name(name: str) -> None:
    """Raises a ValueError (ImportError for a missing optional library) unless ``name`` is a
    registered model or ``"<source>:<model>"`` with a model the source has."""
    prefix, colon, rest = name.partition(":")
    if not colon:
        MODELS.get(name)
        return
    if prefix not in MODEL_SOURCES:
        raise ValueError(
            f"unknown model source {prefix!r} in {name!r}; "
            f"valid: {', '.join(MODEL_SOURCES.names())}"
        )
    MODEL_SOURCES.get(prefix).metadata["check"](rest)


def create_model(name: str, *, attn: Any = None, **kwargs: Any) -> nn.Module:
    """Builds a registered model, or a torchvision / timm one with attention inserted.

    Args:
        name: registered model name (``"resnet50"``, ``"resnet20"``, …), or
            ``"tv:<name>"`` / ``"timm:<name>"`` (:mod:`attnlab.models.external`).
        attn: attention inside every block: a registered attention name, or None.
        **kwargs: the model's options (``num_classes``, ``attn_kwargs``, ``stage_attn``, …).

    Returns:
        The model; ``create_model(**model.config)`` rebuilds it exactly.
    """
    prefix, colon, rest = name.partition(":")
    if colon:
        check_model_name(name)
        return MODEL_SOURCES.get(prefix).factory(rest, attn=attn, **kwargs)
    return MODELS.get(name).factory(attn=attn, **kwargs)
