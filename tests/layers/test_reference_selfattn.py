"""Non-local and criss-cross attention against independent float64 implementations of the
papers' equations (raw torch, explicit loops or explicit N×M matrices), weight for weight.

Non-local: every pairwise function, both presets, with and without sub-sampling; the blocked /
reassociated / sorted linear-memory paths and the dense path against the reference; gradcheck
through the linear-memory paths. Criss-cross: an explicit per-position loop over the row and
column (centre once), with the recurrence sharing weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _reference_math import (  # tests/layers is on sys.path (pytest rootdir-relative import)
    DTYPE,
    batch_norm,
    close,
    conv1x1,
    rand,
    randomize_,
    relu,
    softmax_rows,
)

from attnlab.layers import CrissCrossAttention, NonLocalBlock, capture_maps
from attnlab.layers.nonlocal_block import concatenation_attention

# --------------------------------------------------------------------------------------------
# Non-local block
# --------------------------------------------------------------------------------------------


def pool2x2(t: torch.Tensor) -> torch.Tensor:
    """2×2 max over non-overlapping windows, odd edges padded with −inf (ceil mode)."""
    _, _, height, width = t.shape
    padded = F.pad(t, (0, width % 2, 0, height % 2), value=float("-inf"))
    b, c, h2, w2 = padded.shape
    return padded.reshape(b, c, h2 // 2, 2, w2 // 2, 2).amax(dim=(3, 5))


def nl_reference(x: torch.Tensor, m: NonLocalBlock) -> torch.Tensor:
    """z = BN(W_z y) + x with y_i = Σ_j f(x_i, x_j) g(x_j) / C(x), paper Eq. 1-6."""
    batch, _, height, width = x.shape
    pool = pool2x2 if m.sub_sample else (lambda t: t)
    source = pool(x) if m.pool_input else x

    def keyed(conv):  # φ(x) or g(x) at the key positions, B×c×M
        out = conv1x1(source, conv)
        return (out if m.pool_input else pool(out)).flatten(2)

    g = keyed(m.g)
    mm = g.shape[2]
    if m.mode == "gaussian":
        theta, phi = x.flatten(2), pool(x).flatten(2)
    else:
        theta, phi = conv1x1(x, m.theta).flatten(2), keyed(m.phi)
    pair = torch.einsum("bci,bcj->bij", theta, phi)  # explicit N×M
    if m.mode in ("embedded_gaussian", "gaussian"):
        if m.scale:
            pair = pair / theta.shape[1] ** 0.5
        weights = softmax_rows(pair)
    elif m.mode == "dot_product":
        weights = pair / mm
    else:
        w = m.concat_project.weight.flatten()
        c = theta.shape[1]
        pair = (
            torch.einsum("c,bci->bi", w[:c], theta)[:, :, None]
            + torch.einsum("c,bcj->bj", w[c:], phi)[:, None, :]
        )
        weights = relu(pair) / mm
    y = torch.einsum("bij,bcj->bci", weights, g).reshape(batch, -1, height, width)
    z = conv1x1(y, m.out_conv)
    return x + batch_norm(z, m.norm, training=False)


MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("block_size", [3, 1000])  # linear-memory path, dense path
def test_nonlocal_matches_reference(mode, preset, sub_sample, block_size):
    m = NonLocalBlock(16, mode=mode, preset=preset, sub_sample=sub_sample, block_size=block_size)
    randomize_(m, seed=1).eval()
    x = rand(2, 16, 7, 5, seed=2)
    with torch.no_grad():
        close(m(x), nl_reference(x, m))


def test_nonlocal_presets_differ_where_documented():
    official = NonLocalBlock(8, preset="official")
    paper = NonLocalBlock(8, preset="paper")
    assert (official.scale, official.pool_input) == (True, True)
    assert (paper.scale, paper.pool_input) == (False, False)
    assert NonLocalBlock(8, preset="paper", scale=True).scale is True  # explicit wins
    # Pooling before vs after the φ, g convs changes the result (max does not commute with a
    # linear map), so the presets are distinguishable on the same weights.
    a = randomize_(NonLocalBlock(8, sub_sample=True, scale=False), seed=3).eval()
    b = randomize_(NonLocalBlock(8, sub_sample=True, preset="paper"), seed=3).eval()
    x = rand(1, 8, 6, 6, seed=4)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_nonlocal_is_identity_at_init():
    for norm_layer in (torch.nn.BatchNorm2d, None):
        m = NonLocalBlock(8, norm_layer=norm_layer)
        x = torch.randn(2, 8, 5, 6)
        torch.testing.assert_close(m.train()(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_nonlocal_linear_memory_path_gradcheck(mode):
    m = randomize_(NonLocalBlock(4, mode=mode, block_size=2, sub_sample=True), seed=5).eval()
    x = rand(1, 4, 4, 3, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_nonlocal_gradients_linear_path_equal_dense(mode):
    grads = []
    for block_size in (2, 10_000):
        m = randomize_(NonLocalBlock(6, mode=mode, block_size=block_size), seed=7).eval()
        x = rand(2, 6, 5, 4, seed=8).requires_grad_(True)
        m(x).square().sum().backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        close(a, b)


def test_concatenation_sorted_equals_pairwise_with_ties():
    # Ties between keys and queries sitting exactly on the ReLU boundary (a_i + b_j = 0).
    a = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=DTYPE)
    b = torch.tensor([[1.0, -0.5, -0.5, 0.0, -2.0]], dtype=DTYPE)
    g = rand(1, 3, 5, seed=9)
    expected = torch.zeros(1, 3, 4, dtype=DTYPE)
    for i in range(4):
        for j in range(5):
            expected[0, :, i] += max(a[0, i].item() + b[0, j].item(), 0.0) * g[0, :, j] / 5
    close(concatenation_attention(a, b, g), expected)
    close(concatenation_attention(a, b, g, dense=True), expected)


@pytest.mark.parametrize("mode", MODES)
def test_nonlocal_map_is_the_mean_weight_received(mode):
    m = randomize_(NonLocalBlock(8, mode=mode, sub_sample=True, block_size=4), seed=10).eval()
    x = rand(2, 8, 6, 5, seed=11)
    with torch.no_grad(), capture_maps(m) as maps:
        y = m(x)
    close(y, nl_reference(x, m))  # observing changes nothing
    received = maps["spatial_map"]
    assert received.shape == (2, 1, 3, 3)
    # Rebuild the weights explicitly: scores for each query over the 3×3 pooled keys.
    source = pool2x2(x)
    g_keys = conv1x1(source, m.g).flatten(2)
    if mode == "gaussian":
        theta, phi = x.flatten(2), pool2x2(x).flatten(2)
    else:
        theta, phi = conv1x1(x, m.theta).flatten(2), conv1x1(source, m.phi).flatten(2)
    pair = torch.einsum("bci,bcj->bij", theta, phi)
    if mode in ("embedded_gaussian", "gaussian"):
        weights = softmax_rows(pair / theta.shape[1] ** 0.5)
    elif mode == "dot_product":
        weights = pair / g_keys.shape[2]
    else:
        w, c = m.concat_project.weight.flatten(), theta.shape[1]
        a = torch.einsum("c,bci->bi", w[:c], theta)
        b = torch.einsum("c,bcj->bj", w[c:], phi)
        weights = relu(a[:, :, None] + b[:, None, :]) / g_keys.shape[2]
    close(received.flatten(1), weights.mean(1))


# --------------------------------------------------------------------------------------------
# Criss-cross attention
# --------------------------------------------------------------------------------------------


def cc_once(x: torch.Tensor, m: CrissCrossAttention) -> torch.Tensor:
    """One CCA pass by an explicit loop over positions u = (h, w): keys Ω_u are the column
    (without the centre) and the whole row; softmax over the H + W − 1 energies."""
    q, k, v = conv1x1(x, m.query), conv1x1(x, m.key), conv1x1(x, m.value)
    batch, _, height, width = x.shape
    out = torch.zeros_like(x)
    for h in range(height):
        for w in range(width):
            keys = [(g, w) for g in range(height) if g != h] + [(h, c) for c in range(width)]
            assert len(keys) == height + width - 1
            kk = torch.stack([k[:, :, i, j] for i, j in keys], dim=-1)  # B×d×(H+W−1)
            vv = torch.stack([v[:, :, i, j] for i, j in keys], dim=-1)  # B×C×(H+W−1)
            att = softmax_rows(torch.einsum("bd,bdk->bk", q[:, :, h, w], kk))
            out[:, :, h, w] = torch.einsum("bk,bck->bc", att, vv)
    return x + m.gamma * out


@pytest.mark.parametrize("recurrence", [1, 2, 3])
@pytest.mark.parametrize("size", [(5, 4), (1, 3), (3, 1), (1, 1)])
def test_criss_cross_matches_reference(recurrence, size):
    m = randomize_(CrissCrossAttention(16, recurrence=recurrence), seed=12).eval()
    x = rand(2, 16, *size, seed=13)
    expected = x
    for _ in range(recurrence):
        expected = cc_once(expected, m)  # the same weights every time
    with torch.no_grad():
        close(m(x), expected)


def test_criss_cross_gradcheck_and_identity_at_init():
    m = CrissCrossAttention(8)
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)
    m = randomize_(CrissCrossAttention(8, qk_channels=2), seed=14)
    x = rand(1, 8, 3, 4, seed=15).requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


def test_criss_cross_map_is_the_mean_attention_received():
    m = randomize_(CrissCrossAttention(8, recurrence=1), seed=16).eval()
    x = rand(1, 8, 4, 3, seed=17)
    with torch.no_grad(), capture_maps(m) as maps:
        m(x)
    q, k = conv1x1(x, m.query), conv1x1(x, m.key)
    height, width = 4, 3
    received = torch.zeros(height, width, dtype=DTYPE)
    for h in range(height):
        for w in range(width):
            keys = [(g, w) for g in range(height) if g != h] + [(h, c) for c in range(width)]
            kk = torch.stack([k[0, :, i, j] for i, j in keys], dim=-1)
            att = softmax_rows(q[0, :, h, w] @ kk)
            for (i, j), a in zip(keys, att, strict=True):
                received[i, j] += a
    close(maps["spatial_map"][0, 0], received / (height * width))
