"""A², polarized self-attention and efficient attention against independent float64
implementations of the papers' equations (raw torch, per-position loops where the papers
write sums), weight for weight, every preset and layout.
"""

from __future__ import annotations

import pytest
import torch
from _reference_math import (  # tests/layers is on sys.path (pytest rootdir-relative import)
    DTYPE,
    close,
    conv1x1,
    rand,
    randomize_,
    relu,
    sigmoid,
    softmax_rows,
)

from attnlab.layers import (
    DoubleAttention,
    EfficientAttention,
    PolarizedSelfAttention,
    capture_maps,
)

# --------------------------------------------------------------------------------------------
# A²: gather then distribute
# --------------------------------------------------------------------------------------------


def a2_reference(x: torch.Tensor, m: DoubleAttention) -> torch.Tensor:
    """G = Σ_j a_j b_jᵀ (b softmax over positions), z_i = Σ_k v_ik g_k (v softmax over k)."""
    batch, _, height, width = x.shape
    a = conv1x1(x, m.features).flatten(2)  # B×m×N
    b = softmax_rows(conv1x1(x, m.gather).flatten(2))  # over positions
    v = softmax_rows(conv1x1(x, m.distribute).flatten(2).transpose(1, 2))  # B×N×n, over n
    z = torch.zeros(batch, m.m, height * width, dtype=DTYPE)
    for i in range(height * width):
        for k in range(m.n):
            g_k = (a * b[:, k : k + 1, :]).sum(-1)  # descriptor k: Σ_j a_j b_kj, B×m
            z[:, :, i] += v[:, i, k : k + 1] * g_k
    return x + conv1x1(z.reshape(batch, m.m, height, width), m.out_conv)


@pytest.mark.parametrize("widths", [{}, {"rd_channels_m": 3, "rd_channels_n": 5}])
@pytest.mark.parametrize("size", [(4, 5), (1, 1), (1, 6)])
def test_double_attention_matches_reference(widths, size):
    m = randomize_(DoubleAttention(16, **widths), seed=1).eval()
    x = rand(2, 16, *size, seed=2)
    with torch.no_grad():
        close(m(x), a2_reference(x, m))


def test_double_attention_zero_init_and_gradcheck():
    m = DoubleAttention(8, zero_init=True)
    x = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)
    assert not DoubleAttention(8).identity_at_init
    m = randomize_(DoubleAttention(8), seed=3)
    x = rand(1, 8, 3, 2, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Polarized self-attention
# --------------------------------------------------------------------------------------------


def layer_norm(t: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def psa_channel(x: torch.Tensor, m: PolarizedSelfAttention) -> torch.Tensor:
    """A^ch (B×C): W_v x pooled with softmax-over-positions weights of W_q x, then W_z …"""
    wq = softmax_rows(conv1x1(x, m.ch_query).flatten(2))[:, 0]  # B×N
    wv = conv1x1(x, m.ch_value).flatten(2)  # B×C/2×N
    pooled = torch.einsum("bcn,bn->bc", wv, wq)
    layers = list(m.ch_transform)
    if m.channel_transform == "bottleneck":
        h = torch.einsum("oc,bc->bo", layers[0].weight[:, :, 0, 0], pooled) + layers[0].bias
        h = relu(layer_norm(h, layers[1].norm))
        z = torch.einsum("oc,bc->bo", layers[3].weight[:, :, 0, 0], h) + layers[3].bias
    else:
        z = torch.einsum("oc,bc->bo", layers[0].weight[:, :, 0, 0], pooled)
        if m.channel_transform == "layernorm":
            z = layer_norm(z, layers[1].norm)
    return sigmoid(z)


def psa_spatial(x: torch.Tensor, m: PolarizedSelfAttention) -> torch.Tensor:
    """A^sp (B×N): GAP(W_q x) against W_v x at every position; softmax where the form says."""
    q = conv1x1(x, m.sp_query).mean((2, 3))  # B×C/2
    v = conv1x1(x, m.sp_value).flatten(2)  # B×C/2×N
    if m.spatial_softmax == "query":
        q = softmax_rows(q)
    if m.spatial_softmax == "values":
        v = softmax_rows(v)  # over the positions of each channel
    logits = torch.einsum("bc,bcn->bn", q, v)
    if m.spatial_softmax == "positions":
        logits = softmax_rows(logits)
    return sigmoid(logits)


def psa_reference(x: torch.Tensor, m: PolarizedSelfAttention) -> torch.Tensor:
    shape = x.shape
    z_ch = x * psa_channel(x, m)[:, :, None, None]
    if m.layout == "parallel":
        return z_ch + x * psa_spatial(x, m).reshape(shape[0], 1, *shape[2:])
    return z_ch * psa_spatial(z_ch, m).reshape(shape[0], 1, *shape[2:])


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
@pytest.mark.parametrize("preset", ["paper", "official"])
@pytest.mark.parametrize("size", [(5, 3), (1, 1)])
def test_polarized_matches_reference(layout, preset, size):
    m = randomize_(PolarizedSelfAttention(16, layout=layout, preset=preset), seed=5).eval()
    x = rand(2, 16, *size, seed=6)
    with torch.no_grad():
        close(m(x), psa_reference(x, m))


def test_polarized_presets_name_the_released_forms():
    forms = {
        (p, lay): (m.channel_transform, m.spatial_softmax)
        for p in ("paper", "official")
        for lay in ("parallel", "sequential")
        for m in [PolarizedSelfAttention(16, preset=p, layout=lay)]
    }
    assert forms[("paper", "parallel")] == forms[("paper", "sequential")]
    assert forms[("paper", "parallel")] == ("layernorm", "query")
    assert forms[("official", "parallel")] == ("plain", "positions")
    assert forms[("official", "sequential")] == ("bottleneck", "values")
    m = PolarizedSelfAttention(16, preset="official", spatial_softmax="query")
    assert (m.channel_transform, m.spatial_softmax) == ("plain", "query")  # explicit wins
    with pytest.raises(ValueError, match="PolarizedSelfAttention: layout"):
        PolarizedSelfAttention(16, layout="both")


# --------------------------------------------------------------------------------------------
# Efficient attention
# --------------------------------------------------------------------------------------------


def effattn_reference(x: torch.Tensor, m: EfficientAttention) -> torch.Tensor:
    """Per head and per position: e_i = Σ_j (Σ_c ρ_q(q_i)_c ρ_k(k)_{cj}) v_j, Eq. 4 written as
    the sum it is (no associativity used)."""
    batch, _, height, width = x.shape
    n, heads = height * width, m.head_count
    dk, dv = m.key_channels // heads, m.value_channels // heads
    q = conv1x1(x, m.queries).flatten(2)
    k = conv1x1(x, m.keys).flatten(2)
    v = conv1x1(x, m.values).flatten(2)
    out = torch.zeros(batch, m.value_channels, n, dtype=DTYPE)
    for h in range(heads):
        qh, kh = q[:, h * dk : (h + 1) * dk], k[:, h * dk : (h + 1) * dk]
        vh = v[:, h * dv : (h + 1) * dv]
        if m.normalization == "softmax":
            qh = softmax_rows(qh.transpose(1, 2)).transpose(1, 2)  # over channels
            kh = softmax_rows(kh)  # over positions
            weights = torch.einsum("bci,bcj->bij", qh, kh)  # N×N, explicit
        else:
            weights = torch.einsum("bci,bcj->bij", qh, kh) / n  # dot-product attention / N
        out[:, h * dv : (h + 1) * dv] = torch.einsum("bij,bcj->bci", weights, vh)
    return x + conv1x1(out.reshape(batch, -1, height, width), m.reprojection)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"head_count": 4}, {"normalization": "scaling"}, {"key_channels": 6, "head_count": 2}],
)
@pytest.mark.parametrize("size", [(4, 6), (1, 1)])
def test_efficient_attention_matches_reference(kwargs, size):
    m = randomize_(EfficientAttention(16, **kwargs), seed=7).eval()
    x = rand(2, 16, *size, seed=8)
    with torch.no_grad():
        close(m(x), effattn_reference(x, m))


def test_efficient_attention_checks_heads_and_gradcheck():
    with pytest.raises(ValueError, match="EfficientAttention: head_count must divide"):
        EfficientAttention(16, head_count=3)
    m = randomize_(EfficientAttention(8, head_count=2), seed=9)
    x = rand(1, 8, 3, 3, seed=10).requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


def test_efficient_attention_map_is_the_mean_key_weight():
    m = randomize_(EfficientAttention(8, head_count=2), seed=11).eval()
    x = rand(2, 8, 3, 4, seed=12)
    with torch.no_grad(), capture_maps(m) as maps:
        m(x)
    keys = conv1x1(x, m.keys).flatten(2)  # B×dk×N
    expected = torch.cat([softmax_rows(keys[:, :2]), softmax_rows(keys[:, 2:])], 1).mean(1)
    close(maps["spatial_map"].flatten(1), expected)
    assert maps["spatial_map"].shape == (2, 1, 3, 4)
