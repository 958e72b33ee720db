"""torchvision's and timm's classifiers with attention inserted: ``"tv:<name>"`` and
``"timm:<name>"`` model names.

``create_model("tv:resnet50", attn="cbam", num_classes=10)`` builds the torchvision model
without weights (``weights=None``; timm's with ``pretrained=False``: nothing is downloaded),
inserts attention with :func:`attnlab.insert_attention` (inside every residual block, SE/CBAM/
ECA/CA placement — He et al. arXiv 1512.03385 blocks; ``stage_attn`` after stages, BAM arXiv
1807.06514) and records ``model.config``, so ``create_model(**model.config)`` rebuilds it and
training checkpoints rebuild their model. Pretrained weights from a local file load afterwards
with :func:`attnlab.load_weights` (original names are kept; it lists the new attention keys).

Input size: these are ImageNet networks (stride 32, global pooling before the classifier), so
any input of at least 32×32 runs; at 32×32 the last stage is 1×1 (VGG pools it to 7×7 by
replication). Small images train, but a CIFAR-sized task is better served by attnlab's own
CIFAR ResNets or by a larger ``--image-size``. ``in_chans`` other than 3 needs a timm model.

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("tv:mobilenet_v2", attn="eca", num_classes=4)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 4])
    >>> attnlab.create_model(**model.config).config == model.config
    True
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ..plain import plain
from ..registry import register_model_source
from ..surgery import insert_attention
from ..surgery.stages import stage_outputs

TIMM_MISSING = "timm: models need timm, an optional extra: pip install 'attnlab[timm]'"


def _unknown(source: str, name: str, names: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(f'{source}:{c}' for c in close)}" if close else ""
    return ValueError(f"unknown {source} model {name!r}{hint}")


def torchvision_names() -> list[str]:
    """torchvision's classification models (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check_torchvision(name: str) -> None:
    """Raises a ValueError listing close matches if ``name`` is not a torchvision classifier."""
    names = torchvision_names()
    if name not in names:
        raise _unknown("tv", name, names)


def check_timm(name: str) -> None:
    """Raises ImportError naming the extra without timm, ValueError for an unknown name."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(TIMM_MISSING) from err
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())


def _build_torchvision(name: str, num_classes: int, in_chans: int, kwargs: dict) -> nn.Module:
    import torchvision

    check_torchvision(name)
    if in_chans != 3:
        raise ValueError(
            f"tv:{name}: torchvision models take 3 input channels, got in_chans={in_chans}; "
            "use a timm: model"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _build_timm(name: str, num_classes: int, in_chans: int, kwargs: dict) -> nn.Module:
    check_timm(name)
    import timm

    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


def _name_feature_info(model: nn.Module) -> None:
    """Gives the model attnlab's ``feature_info`` keys (name, channels, stride): timm's entries
    get them beside their own, torchvision's models get a list from a probe pass."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and all(isinstance(e, dict) and "module" in e for e in info):
        for entry in info:
            entry.setdefault("name", entry["module"])
            entry.setdefault("channels", entry.get("num_chs"))
            entry.setdefault("stride", entry.get("reduction"))
        return
    if info is None:
        try:
            stages = stage_outputs(model)
        except ValueError:
            return  # no feature_info: Grad-CAM falls back to the last convolution
        model.feature_info = [{"name": p, "channels": c, "stride": s} for p, c, s in stages]


def create_external(
    source: str,
    name: str,
    *,
    attn: Any = None,
    attn_kwargs: dict | None = None,
    where: str | list[str] = "block",
    stage_attn: Any = None,
    stage_attn_kwargs: dict | None = None,
    replace_se: bool = False,
    identity_init: bool = True,
    num_classes: int = 1000,
    in_chans: int = 3,
    **model_kwargs: Any,
) -> nn.Module:
    """A torchvision (``source="tv"``) or timm (``"timm"``) model with attention inserted.

    Args:
        source: ``"tv"`` or ``"timm"``.
        name: the library's model name (``"resnet50"``, ``"efficientnet_b0"``, …).
        attn: attention for ``where`` (a registered name), or None.
        attn_kwargs: options of that attention.
        where: ``"block"``, ``"stage"`` or module paths, as in ``insert_attention``.
        stage_attn: attention after every stage but the last (e.g. ``"bam"``), or None.
        stage_attn_kwargs: options of the stage attention.
        replace_se: put ``attn`` in the place of the blocks' own SE (``insert_attention``).
        identity_init: start every insertion as an identity (α = 0 blend).
        num_classes: classifier outputs.
        in_chans: input channels (timm models only, for values other than 3).
        **model_kwargs: options of the library's constructor (``drop_rate``, …).

    Returns:
        The model, with ``config`` (``create_model(**config)`` rebuilds it), ``feature_info``
        and ``insertions`` (the ``InsertionReport`` of every insertion).
    """
    builders = {"tv": _build_torchvision, "timm": _build_timm}
    if source not in builders:
        raise ValueError(f"create_model: unknown model source {source!r}; valid: tv, timm")
    model = builders[source](name, int(num_classes), int(in_chans), dict(model_kwargs))
    _name_feature_info(model)
    model.insertions = []
    if attn not in (None, "", "none"):
        model.insertions += insert_attention(
            model, attn, where=where, identity_init=identity_init, replace_se=replace_se,
            **(attn_kwargs or {}),
        )  # fmt: skip
    if stage_attn not in (None, "", "none"):
        model.insertions += insert_attention(
            model, stage_attn, where="stage", identity_init=identity_init,
            **(stage_attn_kwargs or {}),
        )  # fmt: skip
    model.config = plain({
        "name": f"{source}:{name}", "attn": attn, "attn_kwargs": attn_kwargs or {},
        "where": where, "stage_attn": stage_attn, "stage_attn_kwargs": stage_attn_kwargs or {},
        "replace_se": replace_se, "identity_init": identity_init,
        "num_classes": int(num_classes), "in_chans": int(in_chans), **model_kwargs,
    })  # fmt: skip
    return model


def _source(prefix: str, check: Any) -> None:
    def factory(name: str, **kwargs: Any) -> nn.Module:
        return create_external(prefix, name, **kwargs)

    factory.__doc__ = f"{prefix}:<name> models (create_external)."
    register_model_source(prefix, check=check)(factory)


_source("tv", check_torchvision)
_source("timm", check_timm)
