"""Published ResNet-50 parameter counts for SKNet, FcaNet and SA-Net, on shape-only networks.

SKNet-50 (paper Table 2: 27.5M), FcaNet-50 (paper Table 3: 28.07M) and SA-Net-50 (abstract:
25.56M) are rebuilt with ``create_model`` on the "meta" device and counted; the per-module
formulas below are written from the papers' layer shapes, not read from the modules.
"""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.layers import ELA, EMA, GAM, MultiSpectralAttention, SelectiveKernel, ShuffleAttention

RESNET50 = 25_557_032
BLOCK_WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
FCA_DCT_SIZES = [{"dct_size": s} for s in (56, 28, 14, 7)]  # the authors' c2wh table


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_count(**options) -> int:
    with torch.device("meta"):
        return count(attnlab.create_model("resnet50", num_classes=1000, **options))


def test_sknet50_is_27_5m():
    total = meta_count(block_conv="sk", groups=32, width_per_group=4)
    assert round(total / 1e6, 1) == 27.5
    # The same layout as timm's skresnext50_32x4d, counted independently by timm.
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = count(timm.create_model("skresnext50_32x4d", pretrained=False))
    assert total == reference == 27_479_784


def test_resnext_widths_are_torchvision_s():
    tv_models = pytest.importorskip("torchvision.models")
    with torch.device("meta"):
        ours = attnlab.create_model("resnet50", groups=32, width_per_group=4)
        theirs = tv_models.resnext50_32x4d()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_sk_unit_count_from_its_layers():
    # Two 3×3 group convs (G = 32) with BN, W: C→d (no bias), BN(d), A: d→2C (no bias).
    c, d = 128, 32  # d = max(128/16, 32)
    assert count(SelectiveKernel(c)) == 2 * (9 * c * c // 32 + 2 * c) + c * d + 2 * d + d * 2 * c
    assert SelectiveKernel(1024).fc_reduce.out_channels == 64  # C/r wins over L


def test_fcanet50_is_28_07m():
    total = meta_count(attn="fca", attn_stage_kwargs=FCA_DCT_SIZES)
    # SE's MLP without biases: 2·C·C/16 per block; the DCT filters are buffers.
    assert total == RESNET50 + sum(2 * c * (c // 16) for c in BLOCK_WIDTHS) == 28_071_976
    assert round(total / 1e6, 2) == 28.07
    assert count(MultiSpectralAttention(256, preset="native")) == 2 * 256 * 16


def test_sanet50_is_25_56m():
    total = meta_count(attn="sa")
    # 3·C/G per module (G = 64): the abstract's "300" extra parameters is not what its code
    # builds; the total it prints, 25.56M, is.
    assert total == RESNET50 + sum(3 * c // 64 for c in BLOCK_WIDTHS) == 25_557_740
    assert round(total / 1e6, 2) == 25.56


def test_ema_ela_gam_counts_from_their_layers():
    cg = 256 // 32
    assert count(EMA(256)) == (cg * cg + cg) + (9 * cg * cg + cg) + 2 * cg
    assert count(ELA(256)) == 256 * 7 + 2 * 256  # depth-wise k = 7, GN affine
    assert count(ELA(256, preset="large")) == 256 * 8 * 7 + 2 * 256
    h = 256 // 4
    mlp = (256 * h + h) + (h * 256 + 256)
    spatial = (49 * 256 * h + h) + 2 * h + (49 * h * 256 + 256) + 2 * 256
    assert count(GAM(256)) == mlp + spatial
    grouped = (49 * 256 * h // 4 + h) + 2 * h + (49 * h * 256 // 4 + 256) + 2 * 256
    assert count(GAM(256, groups=4)) == mlp + grouped
    assert count(ShuffleAttention(2048)) == 3 * 2048 // 64


def test_sk_block_option_in_basic_blocks_and_errors():
    model = attnlab.create_model("resnet18", block_conv="sk", num_classes=10)
    assert isinstance(model.layer2[0].conv1, SelectiveKernel)
    assert model.layer2[0].conv1.stride == 2 and model.layer2[0].conv1.groups == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.config["block_conv"] == "sk"
    with pytest.raises(ValueError, match="block_conv must be None or 'sk'"):
        attnlab.create_model("resnet18", block_conv="sknet")
    with pytest.raises(ValueError, match="BasicBlock: groups and width_per_group"):
        attnlab.create_model("resnet18", groups=32)


def test_sknet_forward_small():
    model = attnlab.create_model(
        "resnet50", block_conv="sk", groups=32, width_per_group=4, num_classes=5
    ).eval()
    sk = model.layer3[0].conv2
    assert isinstance(sk, SelectiveKernel) and sk.stride == 2 and sk.groups == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 5)
