"""Observable maps: what each module exposes, and that observing changes nothing."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.layers import MapTap, capture_maps

B, C, H, W = 2, 32, 6, 9

EXPECTED_MAPS = {
    "se": {"channel_map": (B, C, 1, 1)},
    "eca": {"channel_map": (B, C, 1, 1)},
    "cbam": {"channel_gate.channel_map": (B, C, 1, 1), "spatial_gate.spatial_map": (B, 1, H, W)},
    "bam": {"channel_map": (B, C, 1, 1), "spatial_map": (B, 1, H, W)},
    "ca": {"height_map": (B, C, H, 1), "width_map": (B, C, 1, W)},
    "pam": {"spatial_map": (B, 1, H, W)},
    "cam": {"channel_map": (B, C, C)},
    "ese": {"channel_map": (B, C, 1, 1)},
    "gc": {"spatial_map": (B, 1, H, W)},
    "ge": {"gather_map": (B, C, 1, 1)},
    "simam": {"neuron_map": (B, C, H, W)},
    "triplet": {"width_map": (B, C, 1, W), "height_map": (B, C, H, 1), "spatial_map": (B, 1, H, W)},
    "scse": {"channel_map": (B, C, 1, 1), "spatial_map": (B, 1, H, W)},
    "sge": {"spatial_map": (B, 32, H, W)},
    "srm": {"channel_map": (B, C, 1, 1)},
    "sk": {"selection_map": (B, 2, C, 1)},
    "fca": {"channel_map": (B, C, 1, 1)},
    "sa": {"channel_map": (B, C // 2, 1, 1), "spatial_map": (B, C // 2, H, W)},
    "ema": {"height_map": (B, C, H, 1), "width_map": (B, C, 1, W), "spatial_map": (B, 32, H, W)},
    "ela": {"height_map": (B, C, H, 1), "width_map": (B, C, 1, W)},
    "gam": {"channel_map": (B, C, H, W), "spatial_map": (B, C, H, W)},
    "nl": {"spatial_map": (B, 1, H, W)},
    "cc": {"spatial_map": (B, 1, H, W)},
    "a2": {"gather_map": (B, C // 4, H, W), "distribute_map": (B, C // 4, H, W)},
    "psa": {"channel_map": (B, C, 1, 1), "spatial_map": (B, 1, H, W)},
    "effattn": {"spatial_map": (B, 1, H, W)},
}


def test_every_registered_module_is_covered():
    assert set(EXPECTED_MAPS) == set(attnlab.list_attention())


@pytest.mark.parametrize("name", sorted(EXPECTED_MAPS))
def test_capture_maps_shapes_and_unchanged_output(name):
    torch.manual_seed(0)
    module = attnlab.create_attention(name, C).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(B, C, H, W)
    with torch.no_grad():
        plain = module(x)
        with capture_maps(module) as maps:
            observed = module(x)
    assert torch.equal(observed, plain)
    assert {k: tuple(v.shape) for k, v in maps.items()} == EXPECTED_MAPS[name]
    # Hooks are gone after the context.
    assert not any(m.observed for m in module.modules() if isinstance(m, MapTap))
    for value in maps.values():
        assert torch.isfinite(value).all()


def test_gate_maps_are_the_applied_gates():
    torch.manual_seed(0)
    se = attnlab.SE(C)
    x = torch.randn(B, C, H, W)
    with capture_maps(se) as maps:
        y = se(x)
    torch.testing.assert_close(y, x * maps["channel_map"])
    cbam = attnlab.CBAM(C, spatial=False)
    with capture_maps(cbam) as maps:
        y = cbam(x)
    torch.testing.assert_close(y, x * maps["channel_gate.channel_map"])
    ca = attnlab.CoordAttention(C).eval()
    with capture_maps(ca) as maps:
        y = ca(x)
    torch.testing.assert_close(y, x * maps["height_map"] * maps["width_map"])


def test_pam_received_map_is_a_distribution_and_cam_rows_sum_to_one():
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W)
    pam = attnlab.PositionAttention(C, block_size=5)
    with capture_maps(pam) as maps:
        pam(x)
    received = maps["spatial_map"]
    # Each query's weights sum to 1, so the per-key average over queries sums to 1.
    torch.testing.assert_close(received.sum((1, 2, 3)), torch.ones(B))
    assert (received >= 0).all()
    cam = attnlab.ChannelAttention(C)
    with capture_maps(cam) as maps:
        cam(0.1 * x)
    torch.testing.assert_close(maps["channel_map"].sum(-1), torch.ones(B, C))


def test_capture_keys_are_qualified_inside_a_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, C, 3, padding=1), attnlab.CBAM(C))
    with capture_maps(model) as maps:
        model(torch.randn(1, 3, 8, 8))
    assert sorted(maps) == ["1.channel_gate.channel_map", "1.spatial_gate.spatial_map"]


def test_detach_false_keeps_the_graph():
    se = attnlab.SE(C)
    with capture_maps(se, detach=False) as maps:
        se(torch.randn(B, C, H, W))
    assert maps["channel_map"].requires_grad
