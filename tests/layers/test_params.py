"""Parameter counts and widths for the authors' settings.

The per-module counts are tied to the published ResNet-50 totals in REFERENCE.md: the sum of
the modules over ResNet-50's 16 bottleneck outputs (3×256, 4×512, 6×1024, 3×2048 channels;
BAM after stages 1-3 at 256, 512, 1024) must equal published total − 25,557,032.
"""

from __future__ import annotations

import pytest

import attnlab
from attnlab.layers import BAM, CBAM, ECA, SE, CoordAttention, PositionAttention
from attnlab.layers._ops import make_divisible, reduced_channels

RESNET50 = 25_557_032
BLOCK_WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_se_resnet50_total():
    assert count(SE(256)) == 256 * 16 + 16 + 16 * 256 + 256 == 8464
    assert RESNET50 + sum(count(SE(c)) for c in BLOCK_WIDTHS) == 28_088_024


def test_cbam_authors_settings():
    # Shared MLP as SE, + 2·7·7 conv weights (no bias) + BN weight and bias.
    assert count(CBAM(256)) == 8464 + 98 + 2 == 8564
    assert RESNET50 + sum(count(CBAM(c)) for c in BLOCK_WIDTHS) == 28_089_624
    # The paper preset drops the BN: 2 parameters fewer per module.
    assert count(CBAM(256, preset="paper")) == 8562
    # The YOLO repositories: r = 8, bias-free MLP, no BN.
    assert count(CBAM(256, preset="yolo")) == 2 * 256 * 32 + 98


def test_bam_authors_settings():
    assert [count(BAM(c)) for c in (256, 512, 1024)] == [17_361, 68_513, 272_193]
    assert RESNET50 + sum(count(BAM(c)) for c in (256, 512, 1024)) == 25_915_099
    assert count(BAM(256, fusion="product")) == 17_361


def test_eca_per_stage_kernels():
    stage_k = {256: 3, 512: 5, 1024: 5, 2048: 7}  # the authors' ResNet-50 checkpoints
    assert RESNET50 + sum(count(ECA(c, k_size=stage_k[c])) for c in BLOCK_WIDTHS) == 25_557_112
    assert [ECA(c).k_size for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]


def test_coord_attention_widths():
    assert CoordAttention(64).conv1.out_channels == 8  # max(8, 64 // 32)
    assert CoordAttention(512).conv1.out_channels == 16
    assert CoordAttention(64, preset="yolo").conv1.out_channels == 4  # 64 // 16, no minimum
    # paper, C = 256: conv1 256→8 (+bias), BN 8, conv_h and conv_w 8→256 (+bias)
    assert count(CoordAttention(256)) == (256 * 8 + 8) + 16 + 2 * (8 * 256 + 256) == 6680
    assert count(CoordAttention(256, preset="yolo")) == 256 * 16 + 32 + 2 * 16 * 256


def test_danet_widths():
    pam = PositionAttention(512)
    assert pam.query.out_channels == pam.key.out_channels == 64
    assert count(pam) == 2 * (512 * 64 + 64) + (512 * 512 + 512) + 1
    assert count(attnlab.create_attention("cam", 512)) == 1


def test_width_helpers():
    assert make_divisible(48 * (1 / 3)) == 16  # floor, robust to 15.999…
    assert make_divisible(10, 8) == 16 and make_divisible(37, 8) == 40
    assert reduced_channels("X", 8, 1 / 16) == 1  # never zero hidden units
    assert reduced_channels("X", 64, 1 / 16, rd_channels=7) == 7
    with pytest.raises(ValueError, match="X: rd_ratio must be a positive number"):
        reduced_channels("X", 64, 0)
    with pytest.raises(ValueError, match="X: rd_channels must be a positive int"):
        reduced_channels("X", 64, 1 / 16, rd_channels=0)
