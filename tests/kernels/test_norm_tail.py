"""kernels.norm_tail: relu(gate(BN(y)) + shortcut) with the norm folded into the gate equals the
textbook tail — outputs, gradients, running statistics — for each BatchNorm configuration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnlab import kernels
from attnlab.kernels import norm_tail
from attnlab.layers import CBAM, ECA, SE

pytestmark = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")

NORMS = {
    "default": dict(),
    "cumulative": dict(momentum=None),
    "no-running": dict(track_running_stats=False),
    "no-affine": dict(affine=False),
}
GATES = {"none": lambda c: None, "se": lambda c: SE(c, rd_channels=4), "eca": lambda c: ECA(c)}


def _norm(kind: str, c: int, dtype) -> nn.BatchNorm2d:
    torch.manual_seed(3)
    norm = nn.BatchNorm2d(c, **NORMS[kind]).to(dtype)
    if norm.affine:
        nn.init.uniform_(norm.weight, -1.5, 1.5)  # negative scales too
        nn.init.uniform_(norm.bias, -0.5, 0.5)
    if norm.track_running_stats:
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return norm


def _tail(norm, attn, y, s):
    z = norm(y)
    return torch.relu((z if attn is None else attn(z)) + s)


@pytest.mark.parametrize("gate", sorted(GATES))
@pytest.mark.parametrize("kind", sorted(NORMS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_folded_tail_is_the_textbook_one(mode, kind, gate):
    dtype = torch.float64
    norm, attn = _norm(kind, 16, dtype), GATES[gate](16)
    attn = attn if attn is None else attn.to(dtype)
    ref_norm, ref_attn = copy.deepcopy(norm), copy.deepcopy(attn)
    for m in (norm, ref_norm, attn, ref_attn):
        if m is not None:
            m.train(mode == "train")
    gen = torch.Generator().manual_seed(0)
    for step in range(2):  # two calls: the running statistics accumulate
        y = torch.randn(3, 16, 5, 6, generator=gen, dtype=dtype) * 2 + 0.5
        s = torch.randn(3, 16, 5, 6, generator=gen, dtype=dtype)
        y1, s1 = y.clone().requires_grad_(), s.clone().requires_grad_()
        y2, s2 = y.clone().requires_grad_(), s.clone().requires_grad_()
        out = norm_tail.apply(norm, attn, y1, s1)
        ref = _tail(ref_norm, ref_attn, y2, s2)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        grad = torch.randn(out.shape, generator=gen, dtype=dtype)
        out.backward(grad)
        ref.backward(grad)
        torch.testing.assert_close(y1.grad, y2.grad, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(s1.grad, s2.grad)
        mods = [(norm, ref_norm)] + ([] if attn is None else [(attn, ref_attn)])
        for a, b in mods:
            for p, q in zip(a.parameters(), b.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11)
            for p, q in zip(a.buffers(), b.buffers(), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=f"step {step}")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck(mode):
    dtype = torch.float64
    norm, attn = _norm("default", 4, dtype), SE(4, rd_channels=2).to(dtype)
    norm.train(mode == "train")
    y = torch.randn(2, 4, 3, 3, dtype=dtype, requires_grad=True)
    s = torch.randn(2, 4, 3, 3, dtype=dtype, requires_grad=True)
    params = (norm.weight, norm.bias, *attn.parameters())
    # running statistics change on each call; gradcheck compares calls with the same input
    state = [b.clone() for b in norm.buffers()]

    def fn(y, s, *_params):
        with torch.no_grad():
            for b, saved in zip(norm.buffers(), state, strict=True):
                b.copy_(saved)
        return norm_tail.apply(norm, attn, y, s)

    assert torch.autograd.gradcheck(fn, (y, s, *params))


def test_without_grad_the_tail_updates_the_statistics_alone():
    norm, attn = _norm("default", 8, torch.float32), SE(8, rd_channels=2)
    ref_norm = copy.deepcopy(norm)
    y, s = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        out = norm_tail.apply(norm, attn, y, s)
        ref = _tail(ref_norm, attn, y, s)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_var, ref_norm.running_var)
    assert int(norm.num_batches_tracked) == 1


def test_row_moments_are_the_mean_and_biased_variance():
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64) * 3 + 10
    mean, var = torch.ops.attnlab_kernels.row_moments(x)
    ref_var, ref_mean = torch.var_mean(x, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)
    x32 = torch.randn(4, 6, 40, 40) * 0.1 + 100  # a large mean: the shift keeps the variance
    mean, var = torch.ops.attnlab_kernels.row_moments(x32)
    ref_var, ref_mean = torch.var_mean(x32.double(), dim=(2, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=0)


def test_what_the_tail_takes():
    assert norm_tail.foldable(nn.BatchNorm2d(8), SE(8))
    assert norm_tail.foldable(nn.BatchNorm2d(8), nn.Identity())
    assert not norm_tail.foldable(nn.BatchNorm2d(8), CBAM(8))  # a spatial part
    assert not norm_tail.foldable(nn.SyncBatchNorm(8), SE(8))
    assert not norm_tail.foldable(nn.GroupNorm(2, 8), None)
    with pytest.raises(ValueError, match="CBAM is not an average-pool channel gate"):
        norm_tail.apply(
            nn.BatchNorm2d(8), CBAM(8), torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
        )


def test_bad_input_is_named():
    norm = nn.BatchNorm2d(8)
    with pytest.raises(ValueError, match="the shortcut must match y"):
        norm_tail.apply(norm, None, torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        norm_tail.apply(norm, None, torch.randn(1, 8, 1, 1), torch.randn(1, 8, 1, 1))
    assert int(norm.num_batches_tracked) == 0  # nothing counted for a refused batch
