"""Collecting every module's maps in a network: outputs unchanged, owners, stages, views."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.layers import MapTap
from attnlab.viz.maps import (
    affinity_maps,
    channel_weights,
    collect_attention,
    last_per_stage,
    module_stages,
    spatial_maps,
    weights_by_stage,
)

# What each registered module offers to the views: (spatial kind or None, channel?, affinity?).
VIEWS = {
    "se": (None, True, False),
    "eca": (None, True, False),
    "cbam": ("spatial", True, False),
    "bam": ("spatial-logits", True, False),
    "ca": ("height×width", True, False),
    "pam": ("spatial", False, False),
    "cam": (None, False, True),
    "ese": (None, True, False),
    "gc": ("spatial", False, False),
    "ge": (None, True, False),
    "simam": ("neuron", False, False),
    "triplet": ("spatial", True, False),
    "scse": ("spatial", True, False),
    "sge": ("group-spatial", False, False),
    "srm": (None, True, False),
    "nl": ("spatial", False, False),
    "cc": ("spatial", False, False),
    "a2": ("gather", False, False),
    "psa": ("spatial", True, False),
    "effattn": ("spatial", False, False),
    "sk": (None, True, False),
    "fca": (None, True, False),
    "sa": ("channel-spatial", True, False),
    "ema": ("height×width", True, False),
    "ela": ("height×width", True, False),
    "gam": ("channel-spatial", False, False),
}


def model_with(name: str) -> nn.Module:
    torch.manual_seed(0)
    where = {"stage_attn": name} if name == "bam" else {"attn": name}
    model = attnlab.create_model("resnet20", num_classes=4, **where).eval()
    with torch.no_grad():  # move every parameter off its (often identity) initialisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_every_registered_module_is_covered():
    assert set(VIEWS) == set(attnlab.list_attention())


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_outputs_unchanged_and_views(name):
    model = model_with(name)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
    output, entries = collect_attention(model, images)
    assert torch.equal(output, plain)
    with torch.no_grad():  # and no hook is left behind
        assert torch.equal(model(images), plain)
    assert not any(m.observed for m in model.modules() if isinstance(m, MapTap))

    stages = module_stages(entries)
    expected = ["stage_attn.layer1", "stage_attn.layer2"] if name == "bam" else [
        f"layer{s}.{b}.attn" for s in (1, 2, 3) for b in range(3)
    ]  # fmt: skip
    assert list(stages) == expected  # forward order, one owner per module
    assert [stages[m] for m in expected] == [m.removeprefix("stage_attn.")[:6] for m in expected]
    spatial_kind, has_channel, has_affinity = VIEWS[name]
    spatial, channel = spatial_maps(entries), channel_weights(entries)
    affinity = affinity_maps(entries)
    assert set(spatial) == (set(expected) if spatial_kind else set())
    assert set(channel) == (set(expected) if has_channel else set())
    assert set(affinity) == (set(expected) if has_affinity else set())
    for module, (kind, maps) in spatial.items():
        size = 32 // 2 ** (int(stages[module][-1]) - 1)
        assert kind == spatial_kind and maps.shape == (2, 1, size, size)
        assert (maps >= 0).all() and (maps <= 1).all()
    for _, weights in channel.values():
        assert weights.dim() == 2 and (weights >= 0).all() and (weights <= 1).all()


def test_derived_views_follow_their_definitions():
    model = model_with("ca")
    _, entries = collect_attention(model, torch.randn(2, 3, 32, 32))
    raw = {e.kind: e.value for e in entries if e.module == "layer2.0.attn"}
    g = raw["height"] * raw["width"]  # B×C×H×W, the gate CA applies
    torch.testing.assert_close(spatial_maps(entries)["layer2.0.attn"][1], g.mean(1, keepdim=True))
    torch.testing.assert_close(channel_weights(entries)["layer2.0.attn"][1], g.mean((2, 3)))

    model = model_with("bam")
    _, entries = collect_attention(model, torch.randn(2, 3, 32, 32))
    raw = {e.kind: e.value for e in entries if e.module == "stage_attn.layer1"}
    kind, maps = spatial_maps(entries)["stage_attn.layer1"]
    torch.testing.assert_close(maps, raw["spatial-logits"].sigmoid())
    torch.testing.assert_close(
        channel_weights(entries)["stage_attn.layer1"][1], raw["channel-logits"].flatten(1).sigmoid()
    )


def test_weights_by_stage_and_last_per_stage():
    model = model_with("se")
    _, entries = collect_attention(model, torch.randn(2, 3, 32, 32))
    by_stage = weights_by_stage(entries)
    # 3 modules × 2 images × channels (16, 32, 64) per stage.
    assert {k: v.numel() for k, v in by_stage.items()} == {
        "layer1": 96,
        "layer2": 192,
        "layer3": 384,
    }
    stages = module_stages(entries)
    assert last_per_stage(list(stages), stages) == [
        "layer1.2.attn",
        "layer2.2.attn",
        "layer3.2.attn",
    ]


def test_a_bare_module_and_a_model_without_attention():
    cbam = attnlab.CBAM(16)
    _, entries = collect_attention(cbam, torch.randn(2, 16, 5, 7))
    assert {e.module for e in entries} == {""} and all(e.stage is None for e in entries)
    assert spatial_maps(entries)[""][1].shape == (2, 1, 5, 7)
    plain = attnlab.create_model("resnet20", num_classes=3).eval()
    output, entries = collect_attention(plain, torch.randn(1, 3, 32, 32))
    assert entries == [] and output.shape == (1, 3)
