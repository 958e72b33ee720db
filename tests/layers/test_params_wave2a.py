"""Widths and ResNet-50 parameter counts for eSE, GC, GE, SimAM, triplet, SGE and SRM.

Totals are built on shape-only ("meta") tensors. Each expected total is the ResNet-50 count
(25,557,032) plus the module's parameters written out per block from its equations, over the
16 bottleneck outputs (3×256, 4×512, 6×1024, 3×2048 channels), or over stages c3–c5 for GC.
"""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.layers import SE, CoordAttention
from attnlab.layers._ops import make_divisible, reduced_channels

RESNET50 = 25_557_032
STAGE_WIDTHS = {1: (256, 3), 2: (512, 4), 3: (1024, 6), 4: (2048, 3)}  # stage: (C, blocks)


def resnet50_params(**kwargs) -> int:
    with torch.device("meta"):
        model = attnlab.create_model("resnet50", num_classes=1000, **kwargs)
    return sum(p.numel() for p in model.parameters())


def per_block_total(per_module, stages=(1, 2, 3, 4)) -> int:
    return sum(per_module(STAGE_WIDTHS[s][0]) * STAGE_WIDTHS[s][1] for s in stages)


# --------------------------------------------------------------------------------------------
# The width helper (timm's make_divisible rule)
# --------------------------------------------------------------------------------------------


def test_width_minimum_defaults_to_the_divisor():
    # 24/16 = 1.5 and 16/16 = 1 round to 0 multiples of 8; the minimum is one multiple.
    assert SE(24, rd_divisor=8).fc1.out_features == 8
    assert SE(16, rd_divisor=8).fc1.out_features == 8
    assert make_divisible(1.5, 8) == 8 and make_divisible(4, 8) == 8
    assert reduced_channels("X", 24, 1 / 16, rd_divisor=8) == 8
    # Nearest multiple, bumped up when rounding loses more than 10%: 37 → 40, 10 → 8 → 16.
    assert make_divisible(37, 8) == 40 and make_divisible(10, 8) == 16
    assert make_divisible(44, 8) == 48 and make_divisible(43.9, 8) == 40
    # An explicit minimum still applies before the 10% rule: max(1, 0) = 1 < 0.9·1.5 → 9.
    assert make_divisible(1.5, 8, min_value=1) == 9
    assert reduced_channels("X", 24, 1 / 16, rd_divisor=8, min_channels=16) == 16
    assert CoordAttention(64, rd_divisor=8, preset="yolo").conv1.out_channels == 8
    # Flooring (divisor 1) keeps the authors' C // r and its minimum of 1.
    assert make_divisible(1.5) == 1 and reduced_channels("X", 8, 1 / 16) == 1


def test_width_rule_agrees_with_timm():
    timm_layers = pytest.importorskip("timm.layers")
    for divisor in (2, 4, 8, 16):
        for tenths in range(1, 2000, 7):
            value = tenths / 10
            assert make_divisible(value, divisor) == timm_layers.make_divisible(value, divisor), (
                value,
                divisor,
            )


# --------------------------------------------------------------------------------------------
# ResNet-50 totals
# --------------------------------------------------------------------------------------------


def test_triplet_resnet50_matches_authors_figure():
    # Per module: 3 branches × (2·7·7 conv weights + BN weight and bias) = 300.
    total = resnet50_params(attn="triplet")
    assert total == RESNET50 + 16 * 300 == 25_561_832
    assert round(total / 1e6, 2) == 25.56  # the authors' README: "25.56 M"


def test_srm_resnet50_total():
    # Per module: CFC 2C + BN 2C.
    total = resnet50_params(attn="srm")
    assert total == RESNET50 + per_block_total(lambda c: 4 * c) == 25_617_448


def test_sge_resnet50_total():
    # Per module: γ and β for each of the 64 groups.
    total = resnet50_params(attn="sge")
    assert total == RESNET50 + 16 * 128 == 25_559_080


def test_ese_resnet50_total():
    # Per module: W_C, C·C weights + C biases.
    total = resnet50_params(attn="ese")
    assert total == RESNET50 + per_block_total(lambda c: c * c + c) == 45_691_688


@pytest.mark.parametrize("attn", ["simam", "ge"])
def test_parameter_free_modules_add_nothing(attn):
    assert resnet50_params(attn=attn) == RESNET50


def gc_block(c: int) -> int:
    hidden = c // 16
    # W_k (C + 1) + W_v1 (C·C/r + C/r) + LayerNorm (2·C/r) + W_v2 (C/r·C + C)
    return (c + 1) + (c * hidden + hidden) + 2 * hidden + (hidden * c + c)


def test_gc_resnet50_c3_to_c5_total():
    total = resnet50_params(attn="gc", attn_stages=(2, 3, 4))
    assert total == RESNET50 + per_block_total(gc_block, stages=(2, 3, 4)) == 28_078_773
    everywhere = resnet50_params(attn="gc")
    assert everywhere == RESNET50 + per_block_total(gc_block)


def test_ge_theta_global_needs_per_stage_sizes():
    # GE-θ with a global gather: one depth-wise H×W kernel + BN per block (224×224 input:
    # maps of 56, 28, 14, 7).
    sizes = [{"feat_size": (s, s)} for s in (56, 28, 14, 7)]
    total = resnet50_params(attn="ge", attn_kwargs={"variant": "theta"}, attn_stage_kwargs=sizes)
    side = {256: 56, 512: 28, 1024: 14, 2048: 7}
    assert total == RESNET50 + per_block_total(lambda c: c * side[c] ** 2 + 2 * c)


# --------------------------------------------------------------------------------------------
# ResNet's attn_stages
# --------------------------------------------------------------------------------------------


def test_attn_stages_places_modules_in_chosen_stages_only():
    model = attnlab.create_model("resnet50", attn="gc", attn_stages=(2, 3, 4), num_classes=10)
    kinds = {
        name: type(block.attn).__name__
        for name in ("layer1", "layer2", "layer3", "layer4")
        for block in getattr(model, name)
    }
    assert kinds == {
        "layer1": "Identity",
        "layer2": "GlobalContext",
        "layer3": "GlobalContext",
        "layer4": "GlobalContext",
    }
    rebuilt = attnlab.create_model(**model.config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("stages", [(0,), (5,), ("2",)])
def test_attn_stages_refuses_unknown_stages(stages):
    with pytest.raises(ValueError, match="ResNet: attn_stages must hold stage numbers in 1…4"):
        attnlab.create_model("resnet50", attn="gc", attn_stages=stages)
