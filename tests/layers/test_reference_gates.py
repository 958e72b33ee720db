"""The gate modules against independent implementations of their papers' equations.

(DANet's PAM and CAM: test_reference_danet.py; shared raw-torch helpers: _reference_math.py.)

Each test builds a module, overwrites all of its parameters (and BatchNorm running statistics)
with random values, converts it to float64 and compares its output with a reference written
here from the facts in REFERENCE.md, using only raw torch ops (matmul/einsum, explicit loops
over kernel taps, pixels or channels, explicit BatchNorm formulas) and the module's weight
tensors, never the module's own helpers. Inputs are random and non-square (H != W), so a
transposed or mis-indexed axis fails.

Covered:

- SE: s = σ(W₂ ReLU(W₁ GAP(x) + b₁) + b₂), y = x·s (with/without bias, explicit width, BN).
- CBAM: shared MLP on GAP and GMP summed; spatial gate from channel-wise [max, mean] (official,
  with BN) or [mean, max] (paper, no BN) maps, k×k conv, σ; channel→spatial, spatial→channel
  and parallel arrangements; channel-only; pool-type ablations; kernel 7 and 3.
- ECA: GAP → zero-padded 1-D conv across channels (explicit sum over taps) → σ; the adaptive
  kernel rule (C = 64…2048 → 3,5,5,5,5,7); even kernels rejected.
- BAM: channel branch FC → BN1d → ReLU → FC; spatial branch 1×1 → (dilated 3×3)×n → 1×1, each
  with BN and ReLU; sum and product fusion; y = x + x·σ(M); maps smaller than the dilation.
- Coordinate Attention: directional pooling, shared 1×1 conv + BN (statistics over the batch
  and all H+W positions jointly in training) + h-swish/ReLU, split, two gates, y = x·g_h·g_w;
  hidden widths of both presets.

BatchNorm modules are checked in eval mode (random running statistics, positive variance) and
in train mode (batch statistics, biased variance, the layer's eps).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _reference_math import (  # tests/layers is on sys.path (pytest rootdir-relative import)
    batch_norm,
    close,
    conv1x1,
    conv2d_taps,
    hswish,
    linear,
    rand,
    randomize_,
    relu,
    sigmoid,
)
from torch import nn

from attnlab.layers import BAM, CBAM, ECA, SE, CoordAttention, eca_kernel_size

# --------------------------------------------------------------------------------------------
# SE
# --------------------------------------------------------------------------------------------


def se_reference(x: torch.Tensor, m: SE, *, norm: bool = False, training: bool = False):
    z = x.mean(dim=(2, 3))  # B×C, GAP
    h = linear(z, m.fc1)
    if norm:
        h = batch_norm(h, m.norm, training)
    s = sigmoid(linear(relu(h), m.fc2))  # B×C
    return x * s[:, :, None, None]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": False}, {"rd_channels": 5}, {"rd_ratio": 1 / 4}],
    ids=["default", "no-bias", "rd5", "r4"],
)
def test_se_matches_reference(kwargs):
    m = randomize_(SE(32, **kwargs), seed=1).eval()
    if kwargs.get("bias", True):
        assert m.fc1.bias is not None and m.fc2.bias is not None
    else:
        assert m.fc1.bias is None and m.fc2.bias is None
    x = rand(2, 32, 5, 7, seed=2)
    close(m(x), se_reference(x, m))


def test_se_hidden_width():
    assert SE(256).fc1.out_features == 16
    assert SE(64).fc2.in_features == 4


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_se_with_batchnorm_matches_reference(training):
    m = randomize_(SE(32, norm_layer=nn.BatchNorm1d), seed=3).train(training)
    x = rand(3, 32, 5, 7, seed=4)
    expected = se_reference(x, m, norm=True, training=training)
    close(m(x), expected)


# --------------------------------------------------------------------------------------------
# CBAM
# --------------------------------------------------------------------------------------------

# Facts per preset, stated here rather than read from the module: spatial pool order, whether a
# BatchNorm follows the spatial conv, whether the MLP has biases, and the reduction ratio.
CBAM_PRESETS = {
    "official": dict(pool_order=("max", "mean"), norm=True, bias=True, hidden=32 // 16),
    "paper": dict(pool_order=("mean", "max"), norm=False, bias=True, hidden=32 // 16),
    "yolo": dict(pool_order=("mean", "max"), norm=False, bias=False, hidden=32 // 8),
}
CBAM_ORDERS = ("channel-spatial", "spatial-channel", "parallel")


def cbam_channel_gate(t: torch.Tensor, m: CBAM, pool_types) -> torch.Tensor:
    """Mc(t) = σ(Σ_pool MLP(pool(t))) as B×C×1×1, one shared MLP."""
    gate = m.channel_gate
    logits = 0
    for pool in pool_types:
        v = t.mean(dim=(2, 3)) if pool == "avg" else t.amax(dim=(2, 3))  # B×C
        logits = logits + linear(relu(linear(v, gate.fc1)), gate.fc2)
    return sigmoid(logits)[:, :, None, None]


def cbam_spatial_gate(t, m: CBAM, pool_order, norm: bool, training: bool) -> torch.Tensor:
    """Ms(t) = σ(BN?(conv_k×k([pool_a(t); pool_b(t)]))) as B×1×H×W, pooled over channels."""
    maps = {"mean": t.mean(dim=1), "max": t.amax(dim=1)}  # B×H×W each
    stacked = torch.stack([maps[p] for p in pool_order], dim=1)  # B×2×H×W
    logits = conv2d_taps(stacked, m.spatial_gate.conv.weight)  # B×1×H×W, no bias
    if norm:
        logits = batch_norm(logits, m.spatial_gate.norm, training)
    return sigmoid(logits)


def cbam_reference(
    x,
    m,
    *,
    preset,
    order="channel-spatial",
    pool_types=("avg", "max"),
    spatial=True,
    training=False,
):
    facts = CBAM_PRESETS[preset]

    def mc(t):
        return cbam_channel_gate(t, m, pool_types)

    def ms(t):
        return cbam_spatial_gate(t, m, facts["pool_order"], facts["norm"], training)

    if not spatial:
        return x * mc(x)
    if order == "channel-spatial":
        x1 = x * mc(x)
        return x1 * ms(x1)
    if order == "spatial-channel":
        x1 = x * ms(x)
        return x1 * mc(x1)
    assert order == "parallel"
    return x * mc(x) * ms(x)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kernel_size", [7, 3])
@pytest.mark.parametrize("order", CBAM_ORDERS)
@pytest.mark.parametrize("preset", ["official", "paper", "yolo"])
def test_cbam_matches_reference(preset, order, kernel_size, training):
    m = randomize_(CBAM(32, preset=preset, order=order, kernel_size=kernel_size), seed=10)
    m.train(training)
    x = rand(2, 32, 5, 7, seed=11)
    expected = cbam_reference(x, m, preset=preset, order=order, training=training)
    close(m(x), expected)


@pytest.mark.parametrize("preset", ["official", "paper", "yolo"])
def test_cbam_preset_structure(preset):
    facts = CBAM_PRESETS[preset]
    m = CBAM(32, preset=preset)
    gate = m.spatial_gate
    assert gate.conv.in_channels == 2 and gate.conv.out_channels == 1
    assert gate.conv.bias is None
    assert m.channel_gate.fc1.out_features == facts["hidden"]
    assert (m.channel_gate.fc1.bias is not None) == facts["bias"]
    assert (m.channel_gate.fc2.bias is not None) == facts["bias"]
    if facts["norm"]:
        assert isinstance(gate.norm, nn.BatchNorm2d)
        assert gate.norm.num_features == 1
        assert gate.norm.eps == 1e-5 and gate.norm.momentum == 0.01
        assert torch.all(gate.norm.weight == 0)  # authors' init: Ms starts at 0.5
    else:
        assert isinstance(gate.norm, nn.Identity)


@pytest.mark.parametrize("kernel_size", [7, 3])
def test_cbam_kernel_padding_keeps_size(kernel_size):
    m = CBAM(32, kernel_size=kernel_size)
    assert m.spatial_gate.conv.kernel_size == (kernel_size, kernel_size)
    assert m.spatial_gate.conv.padding == (kernel_size // 2, kernel_size // 2)
    assert m(torch.randn(2, 32, 5, 7)).shape == (2, 32, 5, 7)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("pool_types", [("avg",), ("max",), ("max", "avg")], ids=str)
@pytest.mark.parametrize("preset", ["official", "paper"])
def test_cbam_pool_types_match_reference(preset, pool_types, training):
    m = randomize_(CBAM(32, preset=preset, pool_types=pool_types), seed=12).train(training)
    x = rand(2, 32, 5, 7, seed=13)
    expected = cbam_reference(x, m, preset=preset, pool_types=pool_types, training=training)
    close(m(x), expected)


@pytest.mark.parametrize("pool_types", [("avg", "max"), ("avg",), ("max",)], ids=str)
@pytest.mark.parametrize("preset", ["official", "paper"])
def test_cbam_channel_only_matches_reference(preset, pool_types):
    m = randomize_(CBAM(32, preset=preset, spatial=False, pool_types=pool_types), seed=14)
    assert m.spatial_gate is None
    x = rand(2, 32, 5, 7, seed=15)
    close(m(x), cbam_reference(x, m, preset=preset, pool_types=pool_types, spatial=False))


def test_cbam_avg_only_channel_gate_is_se_with_same_weights():
    """Paper Table 1: the avg-only channel gate is SE."""
    cbam = randomize_(CBAM(32, preset="paper", pool_types=("avg",), spatial=False), seed=16)
    se = SE(32).double()
    se.fc1.load_state_dict(cbam.channel_gate.fc1.state_dict())
    se.fc2.load_state_dict(cbam.channel_gate.fc2.state_dict())
    x = rand(2, 32, 5, 7, seed=17)
    close(cbam(x), se(x))


def cbam_reference_official_no_bn(x, m):
    """channel→spatial with the official [max, mean] order and no BN."""
    x1 = x * cbam_channel_gate(x, m, ("avg", "max"))
    return x1 * cbam_spatial_gate(x1, m, ("max", "mean"), norm=False, training=False)


def test_cbam_spatial_pool_order_is_applied():
    """Same weights, no BN: 'official' ([max, mean]) and 'paper' ([mean, max]) must differ,
    and swapping the conv's two input channels must turn one into the other."""
    paper = randomize_(CBAM(32, preset="paper"), seed=18).eval()
    official = CBAM(32, preset="official", spatial_norm=False).double().eval()
    official.load_state_dict(paper.state_dict())
    x = rand(2, 32, 5, 7, seed=19)
    y_paper, y_official = paper(x), official(x)
    assert (y_paper - y_official).abs().max() > 1e-3
    close(y_official, cbam_reference_official_no_bn(x, official))
    with torch.no_grad():
        official.spatial_gate.conv.weight.copy_(paper.spatial_gate.conv.weight[:, [1, 0]])
    close(official(x), y_paper)


def test_cbam_official_at_init_halves_after_channel_gate():
    """Official init: BN weight 0 → Ms = σ(BN bias) = σ(0) = 0.5 everywhere (eval and train)."""
    m = CBAM(32).double()
    x = rand(2, 32, 5, 7, seed=20)
    for training in (False, True):
        m.train(training)
        close(m(x), 0.5 * x * cbam_channel_gate(x, m, ("avg", "max")))


def test_cbam_official_bn_running_stats_update():
    """Train mode updates the spatial BN with momentum 0.01 and the unbiased batch variance."""
    m = randomize_(CBAM(32), seed=21).train()
    bn = m.spatial_gate.norm
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    x = rand(2, 32, 5, 7, seed=22)
    x1 = x * cbam_channel_gate(x, m, ("avg", "max"))
    maps = torch.stack([x1.amax(dim=1), x1.mean(dim=1)], dim=1)
    logits = conv2d_taps(maps, m.spatial_gate.conv.weight)
    n = logits.numel()
    batch_mean = logits.mean()
    batch_var_unbiased = ((logits - batch_mean) ** 2).sum() / (n - 1)
    m(x)
    close(bn.running_mean, 0.99 * old_mean + 0.01 * batch_mean)
    close(bn.running_var, 0.99 * old_var + 0.01 * batch_var_unbiased)


# --------------------------------------------------------------------------------------------
# ECA
# --------------------------------------------------------------------------------------------


def eca_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ω_c = σ(Σ_t w_t · y_{c+t-p}), y = GAP(x), zero outside 0..C-1, p = (k-1)/2."""
    batch, channels = x.shape[:2]
    k = weight.numel()
    p = (k - 1) // 2
    y = x.mean(dim=(2, 3))  # B×C
    logits = torch.zeros(batch, channels, dtype=x.dtype)
    for c in range(channels):
        for t in range(k):
            src = c + t - p
            if 0 <= src < channels:
                logits[:, c] = logits[:, c] + weight[t] * y[:, src]
    return x * sigmoid(logits)[:, :, None, None]


@pytest.mark.parametrize(
    ("channels", "k_size", "expected_k"),
    [(64, "adaptive", 3), (128, "adaptive", 5), (16, 5, 5), (24, 9, 9), (8, 1, 1)],
)
def test_eca_matches_reference(channels, k_size, expected_k):
    m = randomize_(ECA(channels, k_size=k_size), seed=30)
    assert m.k_size == expected_k
    assert m.conv.weight.shape == (1, 1, expected_k)
    assert m.conv.bias is None
    x = rand(2, channels, 5, 7, seed=31)
    close(m(x), eca_reference(x, m.conv.weight.reshape(-1)))


@pytest.mark.parametrize(
    ("channels", "k"), [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)]
)
def test_eca_adaptive_kernel_rule(channels, k):
    t = int(abs(math.log2(channels) + 1) / 2)
    assert (t if t % 2 else t + 1) == k  # the paper's rule, restated
    assert eca_kernel_size(channels) == k
    assert ECA(channels).k_size == k


@pytest.mark.parametrize("k_size", [2, 4, 0])
def test_eca_even_kernel_rejected(k_size):
    with pytest.raises(ValueError):
        ECA(64, k_size=k_size)


# --------------------------------------------------------------------------------------------
# BAM
# --------------------------------------------------------------------------------------------


def bam_reference(x, m: BAM, *, fusion: str, dilation: int, training: bool) -> torch.Tensor:
    cb, sb = m.channel_branch, m.spatial_branch
    # Channel branch: GAP → FC → BN1d → ReLU → FC  (B×C)
    mc = linear(relu(batch_norm(linear(x.mean(dim=(2, 3)), cb.fc1), cb.norm, training)), cb.fc2)
    # Spatial branch: 1×1 reduce → BN → ReLU, n × (dilated 3×3 → BN → ReLU), 1×1 project.
    s = relu(batch_norm(conv1x1(x, sb.reduce[0]), sb.reduce[1], training))
    d = dilation
    for block in sb.dilated:
        conv = block[0]
        s = F.conv2d(F.pad(s, (d, d, d, d)), conv.weight, conv.bias, dilation=d)  # no padding arg
        s = relu(batch_norm(s, block[1], training))
    ms = conv1x1(s, sb.project)  # B×1×H×W
    logits = mc[:, :, None, None] + ms if fusion == "sum" else mc[:, :, None, None] * ms
    return x + x * sigmoid(logits)


@pytest.mark.parametrize(
    ("dilation", "num_dilated", "size"),
    [(4, 2, (9, 13)), (2, 1, (9, 13)), (2, 3, (9, 13)), (4, 2, (3, 2)), (4, 0, (5, 7))],
    ids=["d4n2-9x13", "d2n1-9x13", "d2n3-9x13", "d4n2-3x2", "d4n0-5x7"],
)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("fusion", ["sum", "product"])
def test_bam_matches_reference(fusion, training, dilation, num_dilated, size):
    m = BAM(32, fusion=fusion, dilation=dilation, num_dilated=num_dilated)
    randomize_(m, seed=40).train(training)
    assert len(m.spatial_branch.dilated) == num_dilated
    for block in m.spatial_branch.dilated:
        assert block[0].dilation == (dilation, dilation)
        assert block[0].kernel_size == (3, 3)
    x = rand(3, 32, *size, seed=41)
    expected = bam_reference(x, m, fusion=fusion, dilation=dilation, training=training)
    y = m(x)
    assert y.shape == x.shape
    close(y, expected)


@pytest.mark.parametrize(("preset", "fusion"), [("paper", "sum"), ("official", "product")])
def test_bam_presets_fusion(preset, fusion):
    m = randomize_(BAM(32, preset=preset), seed=42).eval()
    assert m.fusion == fusion
    x = rand(2, 32, 9, 13, seed=43)
    close(m(x), bam_reference(x, m, fusion=fusion, dilation=4, training=False))


def test_bam_default_structure():
    """Paper defaults: r = 16, two dilated convs with d = 4, every FC/conv with a bias."""
    m = BAM(64)
    assert m.channel_branch.fc1.out_features == 4
    assert isinstance(m.channel_branch.norm, nn.BatchNorm1d)
    assert len(m.spatial_branch.dilated) == 2
    assert all(b[0].dilation == (4, 4) for b in m.spatial_branch.dilated)
    assert m.spatial_branch.project.in_channels == 4
    assert m.spatial_branch.project.out_channels == 1
    convs = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 6 and all(c.bias is not None for c in convs)


# --------------------------------------------------------------------------------------------
# Coordinate Attention
# --------------------------------------------------------------------------------------------

CA_ACTS = {"paper": hswish, "yolo": relu}


def coord_reference(x: torch.Tensor, m: CoordAttention, *, preset: str, training: bool):
    batch, channels, height, width = x.shape
    z_h = torch.stack([x[:, :, h, :].mean(dim=-1) for h in range(height)], dim=2)  # B×C×H
    z_w = torch.stack([x[:, :, :, w].mean(dim=-1) for w in range(width)], dim=2)  # B×C×W
    z = torch.cat([z_h, z_w], dim=2)  # B×C×(H+W)
    f = CA_ACTS[preset](batch_norm(conv1x1(z, m.conv1), m.norm, training))  # B×mid×(H+W)
    f_h, f_w = f[:, :, :height], f[:, :, height:]
    g_h = sigmoid(conv1x1(f_h, m.conv_h))  # B×C×H
    g_w = sigmoid(conv1x1(f_w, m.conv_w))  # B×C×W
    y = torch.empty_like(x)
    for h in range(height):
        for w in range(width):
            y[:, :, h, w] = x[:, :, h, w] * g_h[:, :, h] * g_w[:, :, w]
    return y


@pytest.mark.parametrize("size", [(5, 9), (9, 5)], ids=["5x9", "9x5"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("preset", ["paper", "yolo"])
def test_coord_attention_matches_reference(preset, training, size):
    m = randomize_(CoordAttention(64, preset=preset), seed=80).train(training)
    x = rand(2, 64, *size, seed=81)
    expected = coord_reference(x, m, preset=preset, training=training)
    close(m(x), expected)


@pytest.mark.parametrize(
    ("channels", "kwargs", "mid", "bias"),
    [
        (64, {}, 8, True),
        (512, {}, 16, True),
        (128, {}, 8, True),
        (64, {"preset": "yolo"}, 4, False),
        (32, {"preset": "yolo"}, 2, False),
    ],
)
def test_coord_attention_widths(channels, kwargs, mid, bias):
    m = CoordAttention(channels, **kwargs)
    assert m.conv1.in_channels == channels and m.conv1.out_channels == mid
    assert isinstance(m.norm, nn.BatchNorm2d) and m.norm.num_features == mid
    for conv in (m.conv_h, m.conv_w):
        assert conv.in_channels == mid and conv.out_channels == channels
    for conv in (m.conv1, m.conv_h, m.conv_w):
        assert (conv.bias is not None) == bias
    expected_act = nn.Hardswish if kwargs.get("preset", "paper") == "paper" else nn.ReLU
    assert isinstance(m.act, expected_act)
