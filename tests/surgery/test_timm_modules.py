"""attnlab's SE, CBAM, ECA and Coordinate Attention compute timm's modules' function under the
options that match them, weight for weight (float64, random weights and BN statistics)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab

timm_layers = pytest.importorskip("timm.layers")


def _timm_cbam(channels: int) -> nn.Module:
    from timm.layers.cbam import CbamModule

    return CbamModule(channels, rd_channels=8)  # [mean, max], conv + BN, bias-free MLP


def _timm_coord(channels: int) -> nn.Module:
    from timm.layers.coord_attn import CoordAttn

    return CoordAttn(channels, rd_channels=8)  # bias-free convs, BN, h-swish


# (attnlab name, attnlab options, timm constructor): the options are where the two differ.
CASES = {
    "se": ("se", {"rd_channels": 8}, lambda c: timm_layers.SEModule(c, rd_channels=8)),
    "eca": ("eca", {"k_size": 3}, lambda c: timm_layers.EcaModule(c, kernel_size=3)),
    "cbam": (
        "cbam",
        {
            "rd_channels": 8,
            "bias": False,
            "spatial_pool_order": ("mean", "max"),
            "spatial_norm": True,
            "spatial_norm_layer": nn.BatchNorm2d,
        },
        _timm_cbam,
    ),  # fmt: skip
    "ca": (
        "ca",
        {"rd_channels": 8, "bias": False, "act_layer": nn.Hardswish, "norm_layer": nn.BatchNorm2d},
        _timm_coord,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_timm_weight_for_weight(case):
    name, options, make_timm = CASES[case]
    torch.manual_seed(0)
    theirs = make_timm(32).double()
    ours = attnlab.create_attention(name, 32, **options).double()
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if tensor.ndim == 1 else
                             torch.randn_like(tensor))  # fmt: skip
        mine, their_values = ours.state_dict(), list(theirs.state_dict().values())
        assert len(mine) == len(their_values), (list(mine), list(theirs.state_dict()))
        for (key, target), source in zip(mine.items(), their_values, strict=True):
            assert target.numel() == source.numel(), key
            target.copy_(source.reshape(target.shape))
    theirs.eval(), ours.eval()
    x = torch.randn(2, 32, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-12)
