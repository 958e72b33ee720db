"""Every attention module's maps for one batch, and the views the plots and scores use.

:func:`collect_attention` runs one forward pass with hooks on the modules' map taps
(:mod:`attnlab.layers.maps`), so outputs are unchanged, and returns each map with the attention
module it belongs to, its kind and its network stage. The views turn the raw maps into what is
shown or scored:

- :func:`spatial_maps`, one B×1×H×W map per module with spatial attention: CBAM's and PAM's
  ``"spatial"`` maps as they are, BAM's ``"spatial-logits"`` branch through a sigmoid (BAM
  applies σ(M_c + M_s); the branch alone is shown), and Coordinate Attention's effective gate
  g^h·g^w (outer product of the height and width gates) averaged over channels;
- :func:`channel_weights`, one B×C matrix per module with channel weights: ``"channel"``
  gates, BAM's ``"channel-logits"`` through a sigmoid, and CA's mean gate per channel
  (mean_h g^h · mean_w g^w, the spatial mean of g^h·g^w);
- :func:`affinity_maps`, DANet CAM's B×C×C channel affinities.

Example:
    >>> import torch, attnlab
    >>> from attnlab.viz.maps import collect_attention, spatial_maps
    >>> model = attnlab.create_model("resnet20", attn="cbam", num_classes=4).eval()
    >>> logits, entries = collect_attention(model, torch.randn(2, 3, 32, 32))
    >>> entries[0].module, entries[0].kind, entries[0].stage
    ('layer1.0.attn', 'channel', 'layer1')
    >>> kind, maps = spatial_maps(entries)["layer3.2.attn"]
    >>> kind, tuple(maps.shape)
    ('spatial', (2, 1, 8, 8))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers.maps import MapTap, capture_maps
from ..registry import ATTENTION, list_attention

SPATIAL_KINDS = ("spatial", "spatial-logits")
CHANNEL_KINDS = ("channel", "channel-logits")


@dataclass
class AttentionMap:
    """One recorded map.

    Attributes:
        name: the tap's qualified name, e.g. ``"layer1.0.attn.spatial_gate.spatial_map"``.
        module: the attention module it belongs to (``"layer1.0.attn"``; ``""`` for the root).
        kind: the tap's kind (see :class:`attnlab.layers.maps.MapTap`).
        value: the map, detached (e.g. B×C×1×1 for ``"channel"``, B×1×H×W for ``"spatial"``).
        stage: the network stage holding the module (``"layer2"``), or None if unknown.
    """

    name: str
    module: str
    kind: str
    value: Tensor
    stage: str | None


def _attention_classes() -> tuple[type, ...]:
    return tuple(
        f for f in (ATTENTION.get(n).factory for n in list_attention()) if isinstance(f, type)
    )


def _stage_of(name: str, stages: list[str]) -> str | None:
    parts = name.split(".")
    if parts[0] == "stage_attn" and len(parts) > 1:
        parts = parts[1:]
    return parts[0] if parts[0] in stages else None


def attention_taps(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Tap name → (owning attention module's name, kind), in registration order.

    The owner is the nearest enclosing instance of a registered attention class, else the
    tap's parent module.
    """
    classes = _attention_classes()
    modules = dict(model.named_modules())
    taps = {}
    for name, module in modules.items():
        if not isinstance(module, MapTap):
            continue
        parts = name.split(".")
        owner = ".".join(parts[:-1])
        for depth in range(len(parts) - 1, -1, -1):
            candidate = ".".join(parts[:depth])
            if isinstance(modules.get(candidate), classes):
                owner = candidate
                break
        taps[name] = (owner, module.kind)
    return taps


def collect_attention(model: nn.Module, images: Tensor) -> tuple[Tensor, list[AttentionMap]]:
    """Runs ``model`` on ``images`` once and records every attention map.

    The forward runs without gradients and in the model's current mode (call ``.eval()``
    first for inference behaviour); hooks observe the maps without changing the outputs.

    Args:
        model: any network holding attnlab attention modules (or none: the list is empty).
        images: the batch, ready for the model (normalised).

    Returns:
        (the model's output, the maps in forward order).
    """
    taps = attention_taps(model)
    stages = [f["name"] for f in getattr(model, "feature_info", [])]
    with torch.no_grad(), capture_maps(model) as maps:
        output = model(images)
    entries = [
        AttentionMap(name, taps[name][0], taps[name][1], value, _stage_of(taps[name][0], stages))
        for name, value in maps.items()
    ]
    return output, entries


# Map kinds holding a weight per channel (or group) and position, B×K×H×W: SimAM's neurons,
# GAM's channel-spatial maps, SGE's groups, A²'s gather maps.
VOLUME_KINDS = ("neuron", "channel-spatial", "group-spatial", "gather")


def _by_module(entries: list[AttentionMap]) -> dict[str, dict[str, AttentionMap]]:
    grouped: dict[str, dict[str, AttentionMap]] = {}
    for entry in entries:
        grouped.setdefault(entry.module, {}).setdefault(entry.kind, entry)
    return grouped


def spatial_maps(entries: list[AttentionMap]) -> dict[str, tuple[str, Tensor]]:
    """Module → (kind it came from, B×1×H×W map) for every module with spatial attention."""
    out = {}
    for module, kinds in _by_module(entries).items():
        if "spatial" in kinds:
            out[module] = ("spatial", kinds["spatial"].value.float())
        elif "spatial-logits" in kinds:
            out[module] = ("spatial-logits", kinds["spatial-logits"].value.float().sigmoid())
        elif "height" in kinds and "width" in kinds:
            g_h, g_w = kinds["height"].value.float(), kinds["width"].value.float()
            out[module] = ("height×width", (g_h * g_w).mean(1, keepdim=True))  # B×1×H×W
        else:
            # Weights per channel (or group) and position: shown as their mean over channels.
            kind = next((k for k in VOLUME_KINDS if k in kinds), None)
            if kind is not None:
                out[module] = (kind, kinds[kind].value.float().mean(1, keepdim=True))  # B×1×H×W
    return out


def channel_weights(entries: list[AttentionMap]) -> dict[str, tuple[str, Tensor]]:
    """Module → (kind it came from, B×C weights) for every module with channel weights."""
    out = {}
    for module, kinds in _by_module(entries).items():
        if "channel" in kinds:
            out[module] = ("channel", kinds["channel"].value.float().flatten(1))
        elif "channel-logits" in kinds:
            logits = kinds["channel-logits"].value.float().flatten(1)
            out[module] = ("channel-logits", logits.sigmoid())
        elif "height" in kinds and "width" in kinds:
            g_h, g_w = kinds["height"].value.float(), kinds["width"].value.float()
            out[module] = ("height×width", g_h.mean((2, 3)) * g_w.mean((2, 3)))  # B×C
        elif "branch-channel" in kinds:
            # SK's selection a (B×M×C, softmax over the M branches): the first branch's share.
            out[module] = ("branch-channel", kinds["branch-channel"].value.float()[:, 0].flatten(1))
    return out


def affinity_maps(entries: list[AttentionMap]) -> dict[str, Tensor]:
    """Module → B×C×C channel-affinity matrix (DANet CAM)."""
    return {
        module: kinds["channel-affinity"].value.float()
        for module, kinds in _by_module(entries).items()
        if "channel-affinity" in kinds
    }


def module_stages(entries: list[AttentionMap]) -> dict[str, str | None]:
    """Module → stage, in forward order."""
    return {e.module: e.stage for e in entries}


def weights_by_stage(entries: list[AttentionMap]) -> dict[str, Tensor]:
    """Stage (or ``"all"`` where unknown) → every channel weight of its modules, flattened."""
    stages = module_stages(entries)
    grouped: dict[str, list[Tensor]] = {}
    for module, (_, weights) in channel_weights(entries).items():
        grouped.setdefault(stages[module] or "all", []).append(weights.flatten())
    return {stage: torch.cat(values) for stage, values in grouped.items()}


def last_per_stage(modules: list[str], stages: dict[str, str | None]) -> list[str]:
    """The last of ``modules`` (in order) in each stage; modules with no stage are all kept."""
    last: dict[str, str] = {}
    keep = []
    for module in modules:
        stage = stages.get(module)
        if stage is None:
            keep.append(module)
        else:
            last[stage] = module
    chosen = set(keep) | set(last.values())
    return [m for m in modules if m in chosen]


def describe(entries: list[AttentionMap]) -> list[dict]:
    """One plain row per map: name, module, stage, kind, shape, min, mean, max."""
    return [
        {
            "name": e.name,
            "module": e.module,
            "stage": e.stage,
            "kind": e.kind,
            "shape": list(e.value.shape),
            "min": float(e.value.min()),
            "mean": float(e.value.float().mean()),
            "max": float(e.value.max()),
        }
        for e in entries
    ]
