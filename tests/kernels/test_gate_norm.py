"""kernels.gate with ``norm``: a block's last BatchNorm folded into CBAM's passes equals
relu(module(norm(y)) + shortcut) on the reference path — outputs, gradients, running statistics —
for positive, negative and zero norm scales, ties at the maxima, training and eval."""

from __future__ import annotations

import copy

import pytest
import torch
from _cases import BUILDERS, build, rand
from torch import nn

from attnlab import kernels
from attnlab.kernels.product import folds

pytestmark = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")


def _norm(c: int, dtype, **kwargs) -> nn.BatchNorm2d:
    torch.manual_seed(5)
    norm = nn.BatchNorm2d(c, **kwargs).to(dtype)
    if norm.affine:
        nn.init.uniform_(norm.weight, -1.5, 1.5)  # both signs: max(a·y + t) reads min y for a < 0
        nn.init.uniform_(norm.bias, -0.5, 0.5)
        with torch.no_grad():
            norm.weight[::3] = 0  # a = 0: the max of a constant map ties everywhere
    if norm.track_running_stats:
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return norm


def _run(module, norm, y, s, grad, folded: bool):
    module, norm = copy.deepcopy(module), copy.deepcopy(norm)
    y, s = y.clone().requires_grad_(), s.clone().requires_grad_()
    if folded:
        out = kernels.gate(module, y, s, norm=norm)
    else:
        with kernels.backend("reference"):
            out = torch.relu(module(norm(y)) + s)
    out.backward(grad)
    grads = [p.grad for p in (*module.parameters(), *norm.parameters())]
    return [out, y.grad, s.grad, *grads, *norm.buffers(), *module.buffers()]


@pytest.mark.parametrize("norm_kwargs", [{}, {"momentum": None}, {"affine": False}], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("key", list(BUILDERS))
def test_the_folded_norm_is_the_norm(key, ties, mode, norm_kwargs):
    dtype, shape = torch.float64, (3, 8, 5, 4)
    module, norm = build(key, 8, dtype), _norm(8, dtype, **norm_kwargs)
    for m in (module, norm):
        m.train(mode == "train")
    assert folds(norm, module)
    y = rand(shape, dtype, ties=ties)
    if ties:
        y[:, :2] = 0.5  # constant channels
        y[:, :, 1, :] = y.amax((2, 3), keepdim=True)[:, :, 0]  # a row of maxima
    s, grad = rand(shape, dtype, seed=1), rand(shape, dtype, seed=2)
    got, want = _run(module, norm, y, s, grad, True), _run(module, norm, y, s, grad, False)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"item {i}")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck(mode):
    dtype = torch.float64
    module, norm = build("cbam", 4, dtype), _norm(4, dtype)
    norm.train(mode == "train")
    y = rand((2, 4, 3, 3), dtype).requires_grad_()
    s = rand((2, 4, 3, 3), dtype, seed=1).requires_grad_()
    state = [b.clone() for b in norm.buffers()]

    def fn(y, s, *_params):
        with torch.no_grad():  # the same running statistics on every call
            for b, saved in zip(norm.buffers(), state, strict=True):
                b.copy_(saved)
        return kernels.gate(module, y, s, norm=norm)

    params = (norm.weight, norm.bias, *list(module.parameters())[:2])
    assert torch.autograd.gradcheck(fn, (y, s, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_what_folds():
    cbam = build("cbam", 8, torch.float32)
    assert folds(nn.BatchNorm2d(8), cbam)
    assert not folds(nn.SyncBatchNorm(8), cbam)

    class MyNorm(nn.BatchNorm2d):
        pass

    assert not folds(MyNorm(8), cbam)
    with pytest.raises(ValueError, match="cannot fold MyNorm"):
        kernels.gate(cbam, torch.randn(2, 8, 3, 3), norm=MyNorm(8))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        kernels.gate(cbam, torch.randn(1, 8, 1, 1), norm=nn.BatchNorm2d(8))
