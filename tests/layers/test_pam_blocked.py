"""PAM's blocked kernel as torch.library custom ops: opcheck, compile, batch handling.

Numerics (blocked = unblocked = the paper's equations, gradients, gradcheck) are in
test_reference.py; memory is measured by benchmarks/pam_memory.py.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.layers import PositionAttention
from attnlab.layers.danet import position_attention


def qkv(batch=2, n=11, d=3, channels=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, d, generator=g, dtype=dtype)
    k = torch.randn(batch, d, n, generator=g, dtype=dtype)
    v_t = torch.randn(batch, n, channels, generator=g, dtype=dtype)
    return q, k, v_t


@pytest.mark.parametrize("want_received", [False, True])
def test_opcheck_forward_and_backward_ops(want_received):
    q, k, v_t = qkv(dtype=torch.float64)
    for t in (q, k, v_t):
        t.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.attnlab.blocked_position_attention.default, (q, k, v_t, 4, want_received)
    )
    # The backward op is first-order only (no autograd of its own): check it on plain tensors.
    with torch.no_grad():
        out, lse, _ = torch.ops.attnlab.blocked_position_attention(q, k, v_t, 4, False)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.attnlab.blocked_position_attention_backward.default,
        (grad, q.detach(), k.detach(), v_t.detach(), out, lse, 4),
    )


def test_lse_is_the_log_partition_function():
    q, k, v_t = qkv()
    _, lse, _ = torch.ops.attnlab.blocked_position_attention(q, k, v_t, 3, False)
    torch.testing.assert_close(lse, torch.logsumexp(torch.bmm(q, k), dim=-1))


def test_samples_in_a_batch_do_not_mix():
    q, k, v_t = qkv(batch=3)
    v = v_t.transpose(1, 2)
    together = position_attention(q, k, v, block_size=4)
    for b in range(3):
        alone = position_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], block_size=4)
        torch.testing.assert_close(together[b : b + 1], alone)


def test_compile_fullgraph_blocked_regime_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = PositionAttention(16, max_block_elements=64)  # 30 positions → blocks of 2
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(2, 16, 6, 5)
    x_eager, x_compiled = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_eager = module(x_eager)
    y_eager.square().sum().backward()
    y_compiled = torch.compile(module, fullgraph=True)(x_compiled)
    y_compiled.square().sum().backward()
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-4, atol=1e-5)


def test_block_size_validation():
    q, k, v_t = qkv()
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        position_attention(q, k, v_t.transpose(1, 2), block_size=0)
    with pytest.raises(ValueError, match="PositionAttention: block_size must be >= 1"):
        PositionAttention(8, block_size=0)
    with pytest.raises(ValueError, match="PositionAttention: max_block_elements must be >= 1"):
        PositionAttention(8, max_block_elements=0)


def test_output_keeps_input_memory_format():
    module = PositionAttention(8, block_size=3)
    x = torch.randn(2, 8, 4, 5)
    assert module(x).is_contiguous()
    assert module(x.contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last
    )


def test_double_backward_is_refused_by_the_blocked_kernel_only():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    blocked = PositionAttention(8, block_size=2)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(blocked(x).sum(), x, create_graph=True)
    unblocked = PositionAttention(8, block_size=9)
    (grad,) = torch.autograd.grad(unblocked(x).sum(), x, create_graph=True)
    grad.sum().backward()  # the plain formulation supports double backward
    assert x.grad is not None
