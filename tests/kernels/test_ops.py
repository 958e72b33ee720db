"""Each CPU operator against its formula, and its argument checks."""

from __future__ import annotations

import pytest
import torch
from _cases import rand

from attnlab import kernels
from attnlab.kernels import cpu

pytestmark = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")

SHAPES = [(2, 5, 3, 7), (2, 3, 1, 1), (2, 4, 1, 6), (1, 300, 17, 19)]
DTYPES = [torch.float32, torch.float64]


def _close(a, b, dtype):
    # float32: sums of up to 300 products, accumulated in double by the kernels, in float32 by
    # the formula
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gate_kernels_match_their_formulas(shape, dtype):
    ops = cpu.ops()
    b, c, h, w = shape
    x, g = rand(shape, dtype, ties=True), rand(shape, dtype, seed=1)
    cw = torch.rand(b, c, dtype=dtype)
    col = (slice(None), slice(None), None, None)
    y = x * cw[col]

    avg, mx, cnt = ops.channel_pool(x, True)
    _close(avg, x.mean((2, 3)), dtype)
    assert torch.equal(mx, x.amax((2, 3)))
    assert torch.equal(cnt, (x == mx[col]).sum((2, 3)).to(dtype))
    avg_only, none, _ = ops.channel_pool(x, False)
    assert torch.equal(avg_only, avg) and none.numel() == 0

    mean, smx, scnt = ops.spatial_pool(x, cw)
    _close(mean, y.mean(1).reshape(b, -1), dtype)
    assert torch.equal(smx, y.amax(1).reshape(b, -1))  # the same products, so exactly
    assert torch.equal(scnt, (y == smx.view(b, 1, h, w)).sum(1).reshape(b, -1).to(dtype))

    sw = torch.rand(b, h * w, dtype=dtype)
    _close(ops.gate_apply(x, cw, sw), y * sw.view(b, 1, h, w), dtype)
    _close(ops.gate_apply(x, cw, None), y, dtype)
    r = rand(shape, dtype, seed=2)
    _close(ops.gate_apply_relu(x, cw, sw, r), torch.relu(y * sw.view(b, 1, h, w) + r), dtype)
    _close(ops.gate_apply_relu(x, cw, None, r), torch.relu(y + r), dtype)

    sa, se = (torch.randn(b, h * w, dtype=dtype) for _ in range(2))
    sw4 = sw.view(b, 1, h, w)
    gm, dsw, dcw = ops.gate_grad_product(g, x, cw, sw, None)
    assert gm.numel() == 0  # unmasked: the caller's g
    _close(dsw, (g * y).sum(1).reshape(b, -1), dtype)
    _close(dcw, (g * x * sw4).sum((2, 3)), dtype)
    out = rand(shape, dtype, seed=4, ties=True)  # ties: exact zeros, masked as ReLU's backward
    gm, dsw, dcw = ops.gate_grad_product(g, x, cw, sw, out)
    masked = torch.ops.aten.threshold_backward(g, out, 0)
    assert torch.equal(gm, masked)
    _close(dsw, (masked * y).sum(1).reshape(b, -1), dtype)
    _close(dcw, (masked * x * sw4).sum((2, 3)), dtype)
    gm, dsw, dcw = ops.gate_grad_product(g, x, cw, None, out)
    assert torch.equal(gm, masked) and dsw.numel() == 0
    _close(dcw, (masked * x).sum((2, 3)), dtype)

    at_max = y == smx.view(b, 1, h, w)
    pools = sa.view(b, 1, h, w) + torch.where(at_max, se.view(b, 1, h, w), 0)
    _close(ops.gate_grad_pool(x, cw, sa, se, smx), (pools * x).sum((2, 3)), dtype)
    dy = g * sw4 + pools

    ca, ce = (torch.randn(b, c, dtype=dtype) for _ in range(2))
    tie = torch.where(x == mx[col], ce[col], 0)
    dx = ops.gate_grad_input(g, x, cw, sw, sa, se, smx, ca, ce, mx)
    _close(dx, dy * cw[col] + ca[col] + tie, dtype)
    dx = ops.gate_grad_input(g, x, cw, None, None, None, None, ca, ce, mx)
    _close(dx, g * cw[col] + ca[col] + tie, dtype)


def test_operators_name_bad_input():
    ops = cpu.ops()
    x = rand((2, 3, 4, 5), torch.float32)
    cw = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="channel_pool: x must be a contiguous"):
        ops.channel_pool(x[0], True)
    with pytest.raises(RuntimeError, match="spatial_pool: x must be a contiguous"):
        ops.spatial_pool(x.half(), cw)
    with pytest.raises(RuntimeError, match="gate_apply: x must be a contiguous"):
        ops.gate_apply(x.to(memory_format=torch.channels_last), cw, None)
    with pytest.raises(RuntimeError, match="gate_apply: cw must be a contiguous 2×3"):
        ops.gate_apply(x, torch.ones(2, 4), None)
    with pytest.raises(RuntimeError, match="gate_apply_relu: residual must match x"):
        ops.gate_apply_relu(x, cw, None, x[:1])
    with pytest.raises(RuntimeError, match="gate_grad_product: grad must match x"):
        ops.gate_grad_product(x[:1], x, cw, None, None)
    with pytest.raises(RuntimeError, match="gate_grad_product: out must match x"):
        ops.gate_grad_product(x, x, cw, None, x[:1])
    sw = torch.ones(2, 20)
    with pytest.raises(RuntimeError, match="gate_grad_pool: smx must be a contiguous 2×20"):
        ops.gate_grad_pool(x, cw, sw, sw, sw[:, :3])
    with pytest.raises(RuntimeError, match="given together"):
        ops.gate_grad_input(x, x, cw, sw, None, None, None, cw, cw, cw)
