"""eSE, GC, GE, SimAM, triplet, scSE, SGE and SRM against independent float64 references.

Each reference is written here from the paper's equations (see each module's docstring) with
raw torch ops and the module's weight tensors only: explicit loops over positions, kernel taps
or groups, explicit BatchNorm/LayerNorm formulas, never the module's own helpers. Parameters
and running statistics are randomised, inputs are non-square, and every preset is compared.
The parameter-free modules (SimAM, SGE at its init, GE-θ⁻) are also checked against values
computed by hand on tiny inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from _reference_math import (  # tests/layers is on sys.path (pytest rootdir-relative import)
    batch_norm,
    close,
    conv1x1,
    conv2d_taps,
    linear,
    rand,
    randomize_,
    relu,
    sigmoid,
)
from torch import nn

import attnlab
from attnlab.layers import (
    SCSE,
    SRM,
    EffectiveSE,
    GatherExcite,
    GlobalContext,
    SimAM,
    SpatialGroupEnhance,
    TripletAttention,
)

B, H, W = 2, 5, 7


def hard_sigmoid(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(t + 3.0, 0.0, 6.0) / 6.0


def std_over_positions(t: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Per (batch, channel) standard deviation over the last two axes, written out."""
    n = t.shape[-1] * t.shape[-2]
    mean = t.sum(dim=(-2, -1), keepdim=True) / n
    divisor = max(n - 1, 1) if unbiased else n
    return torch.sqrt(((t - mean) ** 2).sum(dim=(-2, -1), keepdim=True) / divisor)


# --------------------------------------------------------------------------------------------
# eSE: y = x · hσ(W_C GAP(x) + b)
# --------------------------------------------------------------------------------------------


def test_ese_matches_equation():
    m = randomize_(EffectiveSE(12), seed=1)
    x = rand(B, 12, H, W, seed=2)
    z = x.mean(dim=(2, 3))
    s = hard_sigmoid(linear(z, _as_linear(m.fc)))
    close(m(x), x * s[:, :, None, None])


def _as_linear(conv: nn.Conv2d) -> nn.Linear:
    """The same weights as a Linear, for the reference's matrix product."""
    lin = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None).double()
    with torch.no_grad():
        lin.weight.copy_(conv.weight[:, :, 0, 0])
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    return lin


# --------------------------------------------------------------------------------------------
# GC: z = x ⊙ σ(T_mul(c)) + T_add(c), c = Σ_j softmax_j(W_k x_j) x_j
# --------------------------------------------------------------------------------------------


def layer_norm(v: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def gc_reference(x: torch.Tensor, m: GlobalContext) -> torch.Tensor:
    b, c, h, w = x.shape
    if m.pooling == "att":
        logits = conv1x1(x, m.conv_mask).reshape(b, h * w)
        alpha = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        context = torch.zeros(b, c, dtype=x.dtype)
        for j in range(h * w):
            context = context + alpha[:, j : j + 1] * x.reshape(b, c, h * w)[:, :, j]
    else:
        context = x.mean(dim=(2, 3))

    def transform(t):
        return linear(relu(layer_norm(linear(context, t.fc1), t.norm)), t.fc2)

    out = x
    if "mul" in m.fusion:
        out = out * sigmoid(transform(m.mul_transform))[:, :, None, None]
    if "add" in m.fusion:
        out = out + transform(m.add_transform)[:, :, None, None]
    return out


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fusion": ("mul",)}, {"fusion": ("mul", "add")}, {"pooling": "avg"}],
    ids=["add", "mul", "mul+add", "avg-pool"],
)
def test_gc_matches_equation(kwargs):
    m = randomize_(GlobalContext(32, **kwargs), seed=3)
    x = rand(B, 32, H, W, seed=4)
    close(m(x), gc_reference(x, m))


def test_gc_authors_init_and_width():
    m = GlobalContext(2048)
    assert m.add_transform.fc1.out_features == 128  # int(2048 / 16)
    assert not m.add_transform.fc2.weight.any() and not m.add_transform.fc2.bias.any()
    assert not m.conv_mask.bias.any()
    x = torch.randn(1, 2048, 3, 2)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)  # identity at init (add fusion)


# --------------------------------------------------------------------------------------------
# GE: y = x ⊙ σ(interp(ξ_G(x)))
# --------------------------------------------------------------------------------------------


def avg_gather(x: torch.Tensor, e: int) -> torch.Tensor:
    """Mean over the window of width 2e−1 centred on e·k (positions inside the map only)."""
    b, c, h, w = x.shape
    gh, gw = math.ceil(h / e), math.ceil(w / e)
    out = torch.zeros(b, c, gh, gw, dtype=x.dtype)
    for i in range(gh):
        for j in range(gw):
            rows = range(max(0, e * i - (e - 1)), min(h, e * i + e))
            cols = range(max(0, e * j - (e - 1)), min(w, e * j + e))
            window = x[:, :, list(rows)][:, :, :, list(cols)]
            out[:, :, i, j] = window.mean(dim=(2, 3))
    return out


def depthwise_stride2(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3×3 depth-wise conv, stride 2, zero padding 1, as a sum over taps."""
    b, c, h, w = x.shape
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    out = torch.zeros(b, c, oh, ow, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            patch = padded[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2]
            out = out + patch * weight[:, 0, i, j][None, :, None, None]
    return out


def excite(x: torch.Tensor, g: torch.Tensor, e: int) -> torch.Tensor:
    """x ⊙ σ(g) with each position (i, j) reading cell (i // e, j // e)."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            cell = g[:, :, 0, 0] if e == 0 else g[:, :, i // e, j // e]
            out[:, :, i, j] = x[:, :, i, j] * sigmoid(cell)
    return out


@pytest.mark.parametrize("extent", [0, 2, 4])
def test_ge_theta_minus_matches_equation(extent):
    m = GatherExcite(6, extent=extent).double()
    x = rand(B, 6, 9, 6, seed=5)
    g = x.mean(dim=(2, 3), keepdim=True) if extent == 0 else avg_gather(x, extent)
    close(m(x), excite(x, g, extent))


@pytest.mark.parametrize(("variant", "training"), [("theta", False), ("theta+", False),
                                                   ("theta", True)])  # fmt: skip
def test_ge_theta_extent_matches_equation(variant, training):
    m = randomize_(GatherExcite(8, variant=variant, extent=4), seed=6).train(training)
    x = rand(B, 8, 9, 6, seed=7)
    convs = [mod for mod in m.gather if isinstance(mod, nn.Conv2d)]
    norms = [mod for mod in m.gather if isinstance(mod, nn.BatchNorm2d)]
    g = batch_norm(depthwise_stride2(x, convs[0].weight), norms[0], training)
    g = batch_norm(depthwise_stride2(relu(g), convs[1].weight), norms[1], training)
    if variant == "theta+":
        g = conv1x1(relu(conv1x1(g, m.mlp[0])), m.mlp[2])
    close(m(x), excite(x, g, 4))


def test_ge_theta_global_matches_equation():
    m = randomize_(GatherExcite(4, variant="theta", feat_size=(5, 7)), seed=8).eval()
    x = rand(B, 4, 5, 7, seed=9)
    conv, norm = m.gather[0], m.gather[1]
    g = (x * conv.weight[:, 0][None]).sum(dim=(2, 3), keepdim=True)  # kernel covers the map
    close(m(x), excite(x, batch_norm(g, norm, False), 0))
    with pytest.raises(ValueError, match=r"GatherExcite: .*feat_size \(5, 7\).*6×7"):
        m(rand(B, 4, 6, 7, seed=9))
    with pytest.raises(ValueError, match="GatherExcite: .*feat_size"):
        GatherExcite(4, variant="theta")


def test_ge_theta_minus_hand_values():
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], dtype=torch.float64)  # 1×1×1×4
    # Global: GAP = 2.5. Extent 2: cell 0 = mean(1, 2) = 1.5, cell 1 = mean(2, 3, 4) = 3.
    s25, s15, s3 = (1 / (1 + math.exp(-v)) for v in (2.5, 1.5, 3.0))
    close(GatherExcite(1)(x), x * s25)
    expected = torch.tensor([[[[1 * s15, 2 * s15, 3 * s3, 4 * s3]]]], dtype=torch.float64)
    close(GatherExcite(1, extent=2)(x), expected)


# --------------------------------------------------------------------------------------------
# SimAM: y = x · σ((x − μ)² / (4(σ² + λ)) + 1/2)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["unbiased", "biased"])
def test_simam_matches_equation(variance):
    x = rand(B, 5, H, W, seed=10)
    n = H * W
    mu = x.sum(dim=(2, 3), keepdim=True) / n
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / (n - 1 if variance == "unbiased" else n)
    # Eq. 5: e* = 4(σ² + λ) / ((t − μ)² + 2σ² + 2λ); the output gate is σ(1/e*).
    e_star = 4 * (var + 1e-4) / ((x - mu) ** 2 + 2 * var + 2e-4)
    close(SimAM(5, variance=variance)(x), x * sigmoid(1 / e_star))


def test_simam_hand_values():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float64)
    # μ = 1.5, Σ(t − μ)² = 5, n = 3: σ² = 5/3; (t − μ)² = 2.25, 0.25, 0.25, 2.25.
    inv = [d / (4 * (5 / 3 + 1e-4)) + 0.5 for d in (2.25, 0.25, 0.25, 2.25)]
    gates = [1 / (1 + math.exp(-v)) for v in inv]
    expected = torch.tensor([[[[0.0, gates[1]], [2 * gates[2], 3 * gates[3]]]]])
    close(SimAM(1)(x), expected.double())
    one = torch.tensor([[[[4.0]]]], dtype=torch.float64)  # a 1×1 map: σ(0.5) · x
    close(SimAM(1)(one), one / (1 + math.exp(-0.5)))


# --------------------------------------------------------------------------------------------
# Triplet: y = 1/3 Σ_branches x ⊙ σ(BN(conv7×7([max; mean] over the pooled axis)))
# --------------------------------------------------------------------------------------------


def zpool_gate(t: torch.Tensor, gate, training: bool) -> torch.Tensor:
    """t: B×P×Q×R; Z-pool over P, conv on the Q×R plane, BN, σ → B×1×Q×R."""
    z = torch.stack([t.max(dim=1).values, t.mean(dim=1)], dim=1)
    return sigmoid(batch_norm(conv2d_taps(z, gate.conv.weight), gate.norm, training))


@pytest.mark.parametrize(("spatial", "training"), [(True, False), (False, False), (True, True)])
def test_triplet_matches_authors_rotations(spatial, training):
    m = randomize_(TripletAttention(6, spatial=spatial), seed=11).train(training)
    x = rand(B, 6, H, W, seed=12)
    # The authors' branches: rotate, gate, rotate back.
    x1 = x.permute(0, 2, 1, 3)  # B×H×C×W
    y1 = (x1 * zpool_gate(x1, m.cw, training)).permute(0, 2, 1, 3)
    x2 = x.permute(0, 3, 2, 1)  # B×W×H×C
    y2 = (x2 * zpool_gate(x2, m.hc, training)).permute(0, 3, 2, 1)
    if spatial:
        y3 = x * zpool_gate(x, m.hw, training)
        expected = (y1 + y2 + y3) / 3
    else:
        expected = (y1 + y2) / 2
    close(m(x), expected)


# --------------------------------------------------------------------------------------------
# scSE: max or sum of x·σ(W₂ δ(W₁ GAP(x))) and x·σ(W_sq ⋆ x)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "combine", "hidden"),
    [
        ({}, "max", 8),
        ({"preset": "conference"}, "add", 8),
        ({"preset": "smp"}, "add", 1),
        ({"mode": "cse"}, None, 8),
        ({"mode": "sse"}, None, None),
        ({"preset": "smp", "combine": "max"}, "max", 1),
    ],
    ids=["journal", "conference", "smp", "cse", "sse", "smp-max"],
)
def test_scse_matches_equation(kwargs, combine, hidden):
    m = randomize_(SCSE(16, **kwargs), seed=13)
    x = rand(B, 16, H, W, seed=14)
    mode = kwargs.get("mode", "scse")
    if mode != "sse":
        assert m.cse_fc1.out_channels == hidden  # r = 2 (authors) or 16 (smp)
        s = sigmoid(conv1x1(relu(conv1x1(x.mean(dim=(2, 3), keepdim=True), m.cse_fc1)), m.cse_fc2))
        u_cse = x * s
    if mode != "cse":
        u_sse = x * sigmoid(conv1x1(x, m.sse_conv))
    if mode == "cse":
        expected = u_cse
    elif mode == "sse":
        expected = u_sse
    else:
        expected = torch.maximum(u_cse, u_sse) if combine == "max" else u_cse + u_sse
    close(m(x), expected)


# --------------------------------------------------------------------------------------------
# SGE: per group, a = γ (c − μ_c)/(σ_c + ε) + β with c = g·x, y = x σ(a)
# --------------------------------------------------------------------------------------------


def sge_reference(x: torch.Tensor, m: SpatialGroupEnhance, unbiased: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    per = c // m.groups
    out = torch.empty_like(x)
    for k in range(m.groups):
        xg = x[:, k * per : (k + 1) * per]  # B×C/G×H×W
        g = xg.mean(dim=(2, 3))  # B×C/G
        sim = torch.einsum("bc,bchw->bhw", g, xg)
        mu = sim.mean(dim=(1, 2), keepdim=True)
        std = std_over_positions(sim, unbiased)
        a = m.weight[k] * (sim - mu) / (std + m.eps) + m.bias[k]
        out[:, k * per : (k + 1) * per] = xg * sigmoid(a)[:, None]
    return out


@pytest.mark.parametrize(("groups", "variance"), [(4, "unbiased"), (4, "biased"), (16, "unbiased")])
def test_sge_matches_equation(groups, variance):
    m = randomize_(SpatialGroupEnhance(16, groups=groups, variance=variance), seed=15)
    x = rand(B, 16, H, W, seed=16)
    close(m(x), sge_reference(x, m, variance == "unbiased"))


def test_sge_hand_values_and_init():
    m = SpatialGroupEnhance(2, groups=1).double()
    assert m.weight.tolist() == [0.0] and m.bias.tolist() == [1.0]  # γ = 0, β = 1
    x = torch.tensor([[[[1.0, 2.0, 3.0]], [[0.0, 0.0, 3.0]]]], dtype=torch.float64)  # 1×2×1×3
    s1 = 1 / (1 + math.exp(-1.0))
    close(m(x), x * s1)  # at init a = β = 1 everywhere
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.bias.fill_(-1.0)
    # g = (2, 1); c = 2·x₀ + x₁ = (2, 4, 9); μ = 5; σ = sqrt((9 + 1 + 16) / 2) = sqrt(13).
    std = math.sqrt(13) + 1e-5
    a = [2 * d / std - 1 for d in (-3.0, -1.0, 4.0)]
    gates = torch.tensor([1 / (1 + math.exp(-v)) for v in a], dtype=torch.float64)
    close(m(x), x * gates)


def test_sge_groups_capped_and_checked():
    assert SpatialGroupEnhance(32).groups == 32  # G = 64 capped at C
    assert SpatialGroupEnhance(256).groups == 64
    with pytest.raises(ValueError, match=r"SpatialGroupEnhance: channels \(96\).*groups \(64\)"):
        SpatialGroupEnhance(96)


# --------------------------------------------------------------------------------------------
# SRM: g = σ(BN(w_μ μ + w_σ σ)), y = x · g
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variance", "training"), [("unbiased", False), ("biased", False), ("unbiased", True)]
)
def test_srm_matches_equation(variance, training):
    m = randomize_(SRM(10, variance=variance), seed=17).train(training)
    x = rand(3, 10, H, W, seed=18)
    mu = x.mean(dim=(2, 3))
    sd = std_over_positions(x, variance == "unbiased")[:, :, 0, 0]
    z = m.cfc[:, 0] * mu + m.cfc[:, 1] * sd  # the channel-wise FC
    g = sigmoid(batch_norm(z, m.norm, training))
    close(m(x), x * g[:, :, None, None])


def test_srm_unbiased_std_is_torch_std():
    # The authors' style pooling calls torch.std (Bessel-corrected); compare with it directly.
    m = SRM(4).double()
    x = rand(2, 4, 3, 5, seed=19)
    close(m.style(x)[:, :, 1], x.reshape(2, 4, -1).std(dim=2))


@pytest.mark.parametrize("extent", [0, 2, 4])
def test_ge_theta_minus_agrees_with_timm_where_the_extent_divides_the_map(extent):
    # timm 1.0.31's parametric gather (extra_params=True) does not build (create_conv2d
    # receives kernel_size twice), so only the parameter-free gather is compared with timm.
    timm_ge = pytest.importorskip("timm.layers.gather_excite")
    theirs = timm_ge.GatherExcite(8, extent=extent, use_mlp=False).double()
    x = rand(B, 8, 8, 12, seed=21)  # 4 and 2 divide both sides: nearest is i // e
    close(GatherExcite(8, extent=extent)(x), theirs(x))


@pytest.mark.parametrize("name", ["srm", "sge"])
def test_standard_deviations_of_constant_maps_have_finite_gradients(name):
    # A 1×1 map (e.g. ResNet-50's last stage at 32×32 inputs) makes every σ_c exactly 0.
    m = attnlab.create_attention(name, 8).train()
    x = torch.randn(4, 8, 1, 1, requires_grad=True)
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
