"""The timm presets of SE, ECA and CBAM, weight for weight against timm's own modules.

Each test copies one set of random weights into both modules (timm's 1×1 convs hold our
Linear weights as out×in×1×1) and compares outputs in float64; the hidden widths are compared
over a range of channel counts, including ones where timm's rounding differs from the paper's
floor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.layers import CBAM, ECA, SE

timm_layers = pytest.importorskip("timm.layers")
timm_cbam = pytest.importorskip("timm.layers.cbam")

DT = torch.float64
WIDTHS = [8, 24, 40, 64, 100, 190, 200, 256, 1000]


def load_into(theirs: nn.Module, ours: nn.Module, names: dict[str, str]) -> None:
    """Random weights into ``ours``, copied to ``theirs`` under the mapped names."""
    generator = torch.Generator().manual_seed(0)
    ours.double().eval()
    theirs.double().eval()
    state = {}
    with torch.no_grad():
        for key, value in ours.state_dict().items():
            if value.is_floating_point():
                if key.endswith("running_var"):
                    value.copy_(0.5 + torch.rand(value.shape, generator=generator, dtype=DT))
                else:
                    value.copy_(0.5 * torch.randn(value.shape, generator=generator, dtype=DT))
            prefix = next(p for p in names if key.startswith(p))
            target = names[prefix] + key[len(prefix) :]
            state[target] = value.reshape(theirs.state_dict()[target].shape)
    theirs.load_state_dict(state)


def test_se_timm_widths_and_outputs():
    for c in WIDTHS:
        assert SE(c, preset="timm").fc1.out_features == timm_layers.SEModule(c).fc1.out_channels
    assert SE(190).fc1.out_features == 11 and SE(190, preset="timm").fc1.out_features == 8
    ours, theirs = SE(200, preset="timm"), timm_layers.SEModule(200)
    load_into(theirs, ours, {"fc1": "fc1", "fc2": "fc2"})
    x = torch.randn(2, 200, 5, 7, dtype=DT)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(("preset", "timm_class"), [("timm", "EcaModule"), ("ceca", "CecaModule")])
def test_eca_timm_presets(preset, timm_class):
    cls = getattr(timm_layers, timm_class)
    for c in [4, 16, 64, 256, 2048]:  # timm keeps k >= 3 where ψ(C) = 1
        assert ECA(c, preset=preset).k_size == cls(c).conv.kernel_size[0]
    for c in (16, 64):
        ours, theirs = ECA(c, preset=preset), cls(c)
        load_into(theirs, ours, {"conv": "conv"})
        x = torch.randn(2, c, 4, 3, dtype=DT)
        torch.testing.assert_close(ours(x), theirs(x))


def test_ceca_wraps_around_the_channel_axis():
    ours = ECA(16, preset="ceca").double()
    with torch.no_grad():
        ours.conv.weight.copy_(torch.tensor([[[1.0, 0.0, 0.0]]], dtype=DT))  # ω_i = σ(y_{i−1})
    x = torch.randn(1, 16, 2, 2, dtype=DT)
    y = x.mean((2, 3)).roll(1, dims=1)
    torch.testing.assert_close(ours(x), x * torch.sigmoid(y)[:, :, None, None])


CBAM_NAMES = {
    "channel_gate.fc1": "channel.fc1",
    "channel_gate.fc2": "channel.fc2",
    "spatial_gate.conv": "spatial.conv.conv",
    "spatial_gate.norm": "spatial.conv.bn",
}


@pytest.mark.parametrize(
    ("preset", "timm_class"), [("timm", "CbamModule"), ("timm-light", "LightCbamModule")]
)
@pytest.mark.parametrize("channels", [64, 24])
def test_cbam_timm_presets(preset, timm_class, channels):
    ours, theirs = CBAM(channels, preset=preset), getattr(timm_cbam, timm_class)(channels)
    assert ours.channel_gate.fc1.out_features == theirs.channel.fc1.out_channels
    load_into(theirs, ours, CBAM_NAMES)
    x = torch.randn(2, channels, 6, 5, dtype=DT)
    torch.testing.assert_close(ours(x), theirs(x))


def test_cbam_timm_initial_spatial_norm_is_timm_s():
    # timm's spatial BN starts at weight 1 and momentum 0.1 (the authors' code: 0 and 0.01).
    for preset in ("timm", "timm-light"):
        norm = CBAM(32, preset=preset).spatial_gate.norm
        assert norm.weight.item() == 1.0 and norm.momentum == 0.1
    assert CBAM(32).spatial_gate.norm.weight.item() == 0.0


def test_cbam_timm_light_trains_like_timm():
    ours, theirs = CBAM(32, preset="timm-light"), timm_cbam.LightCbamModule(32)
    load_into(theirs, ours, CBAM_NAMES)
    ours.train()
    theirs.train()
    x = torch.randn(3, 32, 5, 4, dtype=DT)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(
        ours.spatial_gate.norm.running_mean, theirs.spatial.conv.bn.running_mean
    )


@pytest.mark.parametrize(
    ("preset", "timm_class"), [("timm", "CbamModule"), ("timm-light", "LightCbamModule")]
)
def test_cbam_timm_presets_float32_through_the_default_backend(preset, timm_class):
    # float32 inputs take attnlab's kernel fast path where it is built (float64 above does
    # not), so the presets' pooling reaches it too.
    ours, theirs = CBAM(64, preset=preset), getattr(timm_cbam, timm_class)(64)
    load_into(theirs, ours, CBAM_NAMES)
    ours.float()
    theirs.float()
    x = torch.randn(2, 64, 9, 7)
    torch.testing.assert_close(ours(x), theirs(x))
