"""DANet's PAM and CAM against independent implementations of the paper's equations.

Same method as test_reference_gates.py (random float64 weights, raw-torch references from
REFERENCE.md): PAM for every blocking configuration, gradcheck, gradients blocked ==
unblocked == reference, the functional ``position_attention`` with the attention received per
key; CAM's paper and official (rowmax − energy) variants.
"""

from __future__ import annotations

import pytest
import torch
from _reference_math import (  # tests/layers is on sys.path (pytest rootdir-relative import)
    ATOL,
    DTYPE,
    RTOL,
    close,
    conv1x1,
    rand,
    randomize_,
    softmax_rows,
)

from attnlab.layers import ChannelAttention, PositionAttention, position_attention

# --------------------------------------------------------------------------------------------
# DANet position attention (PAM)
# --------------------------------------------------------------------------------------------


def pam_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """s[b,i,j] = exp(Q_i·K_j) / Σ_j' exp(Q_i·K_j'), q B×N×d, k B×d×N; no 1/√d scaling."""
    energy = torch.einsum("bid,bdj->bij", q, k)  # explicit N×N
    return softmax_rows(energy)


def pam_reference(x: torch.Tensor, m: PositionAttention) -> torch.Tensor:
    batch, channels, height, width = x.shape
    n = height * width
    q = conv1x1(x, m.query).reshape(batch, -1, n).transpose(1, 2)  # B×N×d
    k = conv1x1(x, m.key).reshape(batch, -1, n)  # B×d×N
    v = conv1x1(x, m.value).reshape(batch, channels, n)  # B×C×N
    s = pam_scores(q, k)  # B×N×N
    out = torch.einsum("bij,bcj->bci", s, v)  # out_i = Σ_j s_ij V_j
    return m.gamma * out.reshape(batch, channels, height, width) + x


def make_pam(channels: int = 32, seed: int = 50, **kwargs) -> PositionAttention:
    m = randomize_(PositionAttention(channels, **kwargs), seed=seed, std=0.2)
    with torch.no_grad():
        m.gamma.fill_(0.7)  # 0 at init, which would hide the attention branch
    return m


PAM_CONFIGS = {
    "auto": dict(),
    "block1": dict(block_size=1),
    "block3": dict(block_size=3),  # 35 = 11·3 + 2: last block is partial
    "blockN": dict(block_size=35),
    "block>N": dict(block_size=1000),
    "budget280": dict(max_block_elements=280),  # 280 // 35 = 8 queries per block
    "budget1": dict(max_block_elements=1),
    "block2": dict(block_size=2),
}


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
@pytest.mark.parametrize("config", list(PAM_CONFIGS), ids=list(PAM_CONFIGS))
def test_pam_matches_reference(config, grad):
    m = make_pam(**PAM_CONFIGS[config])
    assert m.query.out_channels == m.key.out_channels == 4  # C/8
    assert m.value.out_channels == 32
    x = rand(2, 32, 5, 7, seed=51, scale=0.5)
    with torch.no_grad():
        expected = pam_reference(x, m)
    with torch.set_grad_enabled(grad):
        y = m(x.requires_grad_(grad))
    assert y.requires_grad == grad
    close(y.detach(), expected)


def test_pam_attention_not_saturated():
    """Guards the test's power: with these weights the softmax is far from one-hot, so a
    missing/extra 1/√d scaling or a softmax over the wrong axis would change the output."""
    m = make_pam()
    x = rand(2, 32, 5, 7, seed=51, scale=0.5)
    q = conv1x1(x, m.query).reshape(2, 4, 35).transpose(1, 2)
    k = conv1x1(x, m.key).reshape(2, 4, 35)
    s = pam_scores(q, k)
    assert s.max() < 0.9
    scaled = softmax_rows(torch.einsum("bid,bdj->bij", q, k) / 2.0)
    assert (scaled - s).abs().max() > 1e-2


def test_pam_gradcheck_blocked_recomputed():
    m = make_pam(channels=8, seed=52, block_size=5)  # N = 12: blocks of 5, 5, 2, recomputed
    x = rand(1, 8, 3, 4, seed=53).requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_pam_gradients_blocked_equal_unblocked_and_reference():
    blocked = make_pam(seed=54, block_size=3)
    unblocked = PositionAttention(32, block_size=10**9).double()
    unblocked.load_state_dict(blocked.state_dict())
    reference_params = PositionAttention(32).double()
    reference_params.load_state_dict(blocked.state_dict())
    x0 = rand(2, 32, 5, 7, seed=55, scale=0.5)
    g = rand(2, 32, 5, 7, seed=56)

    def grads(forward, module):
        x = x0.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        (forward(x) * g).sum().backward()
        return [x.grad] + [p.grad for _, p in module.named_parameters()]

    g_blocked = grads(blocked, blocked)
    g_unblocked = grads(unblocked, unblocked)
    g_reference = grads(lambda x: pam_reference(x, reference_params), reference_params)
    names = ["input"] + [n for n, _ in blocked.named_parameters()]
    assert sorted(names) == sorted(
        ["input", "gamma", "query.weight", "query.bias", "key.weight", "key.bias"]
        + ["value.weight", "value.bias"]
    )
    for name, a, b, r in zip(names, g_blocked, g_unblocked, g_reference, strict=True):
        assert a is not None and b is not None and r is not None, name
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda s, n=name: f"{n}: {s}")
        torch.testing.assert_close(a, r, rtol=RTOL, atol=ATOL, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("block_size", [None, 1, 3, 35, 100])
def test_position_attention_function_matches_reference(block_size):
    batch, n, d, channels = 2, 35, 4, 6
    q = rand(batch, n, d, seed=60)
    k = rand(batch, d, n, seed=61)
    v = rand(batch, channels, n, seed=62)
    s = pam_scores(q, k)  # B×N(queries)×N(keys)
    expected_out = torch.einsum("bij,bcj->bci", s, v)
    expected_received = s.mean(dim=1)  # received[b, j] = mean_i s_ij
    out = position_attention(q, k, v, block_size=block_size)
    assert out.shape == (batch, channels, n)
    close(out, expected_out)
    out2, received = position_attention(q, k, v, block_size=block_size, return_received=True)
    assert received.shape == (batch, n)
    close(out2, expected_out)
    close(received, expected_received)
    close(received.sum(dim=1), torch.ones(batch, dtype=DTYPE))


# --------------------------------------------------------------------------------------------
# DANet channel attention (CAM)
# --------------------------------------------------------------------------------------------


def cam_reference(x: torch.Tensor, gamma: torch.Tensor, variant: str) -> torch.Tensor:
    batch, channels, height, width = x.shape
    a = x.reshape(batch, channels, height * width)  # B×C×N
    energy = torch.einsum("bcn,bdn->bcd", a, a)  # E = A·Aᵀ
    if variant == "paper":
        att = softmax_rows(energy)
    else:  # authors' code, literally: softmax(rowmax(E) − E)
        att = softmax_rows(energy.max(dim=-1, keepdim=True).values - energy)
    out = torch.einsum("bcd,bdn->bcn", att, a)  # out = att·A
    return gamma * out.reshape(batch, channels, height, width) + x


def make_cam(variant: str) -> ChannelAttention:
    m = ChannelAttention(24, variant=variant).double()
    with torch.no_grad():
        m.gamma.fill_(0.8)  # 0 at init
    return m


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_cam_matches_reference(variant):
    m = make_cam(variant)
    x = rand(2, 24, 5, 7, seed=70, scale=0.1)
    close(m(x), cam_reference(x, m.gamma, variant))


def test_cam_default_is_official():
    assert ChannelAttention(8).variant == "official"


def test_cam_variants_differ():
    x = rand(2, 24, 5, 7, seed=71, scale=0.1)
    y_official, y_paper = make_cam("official")(x), make_cam("paper")(x)
    assert (y_official - y_paper).abs().max() > 1e-3
