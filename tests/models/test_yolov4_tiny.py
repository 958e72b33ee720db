"""YOLOv4-tiny: the published parameter count, output shapes, phi/attn choices, config, errors."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.layers import CBAM, ECA, SE, CoordAttention
from attnlab.models.yolov4_tiny import ANCHOR_MASKS, ANCHORS, YOLOv4Tiny


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_phi0_matches_reference():
    assert count(attnlab.create_model("yolov4_tiny", num_classes=20, phi=0)) == 5_918_006


@pytest.mark.parametrize(
    ("phi", "expected", "cls"),
    [
        # SE r=16 bias-free: 2C²/16 at C = 256, 512, 128.
        (1, 5_918_006 + 2 * (256 * 16 + 512 * 32 + 128 * 8), SE),
        # CBAM r=8 bias-free MLP 2C²/8, plus a bias-free 7×7 conv on 2 maps (98) per site.
        (2, 5_918_006 + 2 * (256 * 32 + 512 * 64 + 128 * 16) + 3 * 98, CBAM),
        # ECA: adaptive k = 5 for 128, 256 and 512 channels, no bias.
        (3, 5_918_006 + 3 * 5, ECA),
        # CA r=16 bias-free: F1 (C·C/16), BN (2·C/16), F_h and F_w (C/16·C each).
        (
            4,
            5_918_006 + sum(3 * c * c // 16 + 2 * c // 16 for c in (256, 512, 128)),
            CoordAttention,
        ),
    ],
)
def test_phi_counts_and_modules(phi, expected, cls):
    model = attnlab.create_model("yolov4_tiny", num_classes=20, phi=phi)
    assert count(model) == expected
    modules = model.attention_modules()
    assert len(modules) == 3 and all(isinstance(m, cls) for m in modules)
    assert [m.channels for m in modules] == [256, 512, 128]


def test_phi_settings():
    se = attnlab.create_model("yolov4_tiny", phi=1).feat1_attn
    assert se.fc1.bias is None and se.fc1.out_features == 16
    ca = attnlab.create_model("yolov4_tiny", phi=4).feat2_attn
    assert ca.conv1.bias is None and isinstance(ca.norm, torch.nn.BatchNorm2d)
    assert isinstance(ca.act, torch.nn.ReLU) and ca.conv1.out_channels == 32
    cbam = attnlab.create_model("yolov4_tiny", phi=2).feat2_attn
    assert cbam.preset == "yolo"


@pytest.mark.parametrize("size", [(416, 416), (320, 320), (256, 384), (96, 32)])
def test_output_shapes(size):
    model = attnlab.create_model("yolov4_tiny", num_classes=20).eval()
    height, width = size
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    assert [tuple(o.shape) for o in out] == [
        (1, 75, height // 32, width // 32),
        (1, 75, height // 16, width // 16),
    ]


@pytest.mark.parametrize("phi", range(5))
def test_every_phi_runs(phi):
    model = attnlab.create_model("yolov4_tiny", num_classes=3, phi=phi)
    out = model(torch.randn(2, 3, 32, 64))
    assert [tuple(o.shape) for o in out] == [(2, 24, 1, 2), (2, 24, 2, 4)]
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_attn_by_name_and_kwargs():
    model = attnlab.create_model("yolov4_tiny", attn="se", attn_kwargs={"rd_ratio": 1 / 4})
    assert model.feat1_attn.fc1.out_features == 64
    assert model.config["attn"] == "se"
    model = attnlab.create_model("yolov4_tiny", phi=1, attn_kwargs={"rd_ratio": 1 / 8})
    assert model.feat2_attn.fc1.out_features == 64 and model.feat2_attn.fc1.bias is None


def test_config_rebuilds_and_is_json():
    model = attnlab.create_model("yolov4_tiny", num_classes=7, phi=3)
    config = model.config
    assert json.loads(json.dumps(config)) == config
    assert config["anchors"] == [list(a) for a in ANCHORS]
    assert config["anchor_masks"] == [list(m) for m in ANCHOR_MASKS]
    again = attnlab.create_model(**config)
    assert again.config == config
    assert again.state_dict().keys() == model.state_dict().keys()


def test_features_and_head():
    model = attnlab.create_model("yolov4_tiny", num_classes=2).eval()
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        feat1, feat2 = model.forward_features(x)
        assert feat1.shape == (1, 256, 8, 4) and feat2.shape == (1, 512, 4, 2)
        out = model.forward_head((feat1, feat2))
        torch.testing.assert_close(out, model(x))


@pytest.mark.parametrize("size", [(100, 96), (96, 100), (16, 32)])
def test_bad_sizes(size):
    model = attnlab.create_model("yolov4_tiny", num_classes=2)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, *size))


def test_bad_options():
    with pytest.raises(ValueError, match="phi"):
        YOLOv4Tiny(phi=5)
    with pytest.raises(ValueError, match="num_classes"):
        YOLOv4Tiny(num_classes=0)
    with pytest.raises(ValueError, match="anchor_masks"):
        YOLOv4Tiny(anchor_masks=[[0, 1, 9], [1, 2, 3]])
    with pytest.raises(TypeError, match="yolov4_tiny"):
        attnlab.create_model("yolov4_tiny", bogus=1)
