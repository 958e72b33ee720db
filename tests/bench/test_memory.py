"""Peak tensor memory of a call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.bench import peak_memory
from attnlab.layers import PositionAttention

MIB = 2**20
FLOATS_PER_MIB = MIB // 4


def test_known_allocations():
    def two_then_three():
        a, b = torch.empty(FLOATS_PER_MIB), torch.empty(FLOATS_PER_MIB)  # 2 MiB together
        del a, b
        return torch.empty(3 * FLOATS_PER_MIB)  # then 3 MiB alone

    def overlap():
        a, b = torch.empty(FLOATS_PER_MIB), torch.empty(FLOATS_PER_MIB)
        del b
        c = torch.empty(3 * FLOATS_PER_MIB // 2)  # 1.5 MiB while a is alive
        return a, c

    assert peak_memory(two_then_three) == 3 * MIB
    assert peak_memory(overlap) == 2.5 * MIB


def test_each_storage_once_and_only_new_ones():
    existing = torch.zeros(FLOATS_PER_MIB)

    def views_and_in_place():
        a = torch.zeros(FLOATS_PER_MIB)  # 1 MiB
        view = a.view(16, -1)[:4]
        view.mul_(2)
        a.add_(1)
        existing.add_(1)  # in place on a tensor from before the call: nothing new
        return existing.view(-1)[:8], a

    assert peak_memory(views_and_in_place) == MIB


def test_forward_backward_costs_more_than_forward():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    x = torch.randn(64, 256)
    with torch.no_grad():
        forward = peak_memory(lambda: model(x))
    train = peak_memory(lambda: model(x).sum().backward())
    assert forward >= 64 * 256 * 4  # at least the output
    # The parameters' gradients alone stay allocated after the call (kept in .grad).
    grads = sum(4 * p.numel() for p in model.parameters())
    assert train > grads > forward


def test_linear_chain_matches_its_activation_bytes():
    """A chain of L bias-free Linear(d, d) layers on n ≫ d rows: one activation is A = 4·n·d
    bytes, all weights together W = 4·L·d² bytes (W = A / 16 here, so activations dominate).

    - no grad: the input exists before the call, so the peak is two activations alive at once
      (a layer's output while the next is computed), exactly 2·A;
    - forward + backward: the L − 1 hidden activations are saved for backward and the first
      backward step makes an input gradient of A while they are alive, so the peak is at least
      L·A; weight gradients add at most W (and the scalar loss a few bytes).
    """
    n, d, layers = 4096, 64, 4
    model = nn.Sequential(*[nn.Linear(d, d, bias=False) for _ in range(layers)])
    x = torch.randn(n, d)
    activation, weights = 4 * n * d, 4 * layers * d * d
    with torch.no_grad():
        assert peak_memory(lambda: model(x)) == 2 * activation

    def step():
        model(x).sum().backward()

    fresh = peak_memory(step)
    assert layers * activation <= fresh <= layers * activation + weights + 64
    # Gradients that exist before the call accumulate in place: not counted again.
    again = peak_memory(step)
    assert layers * activation <= again < fresh
    assert all(p.grad is not None for p in model.parameters())


def test_custom_op_counts_its_outputs():
    # Blocked position attention runs as one custom op: the tracker sees its outputs (the
    # 1×8×1024 result at least), not its per-block scratch (rss_growth measures that).
    module = PositionAttention(8, max_block_elements=256 * 1024)
    x = torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        peak = peak_memory(lambda: module(x))
    assert 8 * 1024 * 4 <= peak < MIB
    plain = PositionAttention(8, block_size=10**12)
    with torch.no_grad():
        assert peak_memory(lambda: plain(x)) >= 1024 * 1024 * 4  # the whole N×N matrix


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocator_statistics():
    n = FLOATS_PER_MIB
    assert peak_memory(lambda: torch.empty(4 * n, device="cuda"), device="cuda") >= 4 * MIB


def test_rss_growth_sees_touched_memory():
    from attnlab.bench.memory import rss_growth

    def touch_64_mib():
        buffer = torch.ones(16 * 2**20)  # 64 MiB, written, so resident
        assert buffer.sum() > 0

    result = rss_growth(touch_64_mib)
    assert result["growth_bytes"] >= 48 * 2**20
    assert result["peak_bytes"] >= result["growth_bytes"]
