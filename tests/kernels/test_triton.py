"""The Triton kernels (the opt-in fast path on CUDA) against their formulas and the reference.

Without a GPU they run in Triton's interpreter (``TRITON_INTERPRET=1``, set by the session's
conftest before Triton is imported) on CPU tensors: the gate product is pointed at them, so the
modules run the code that runs on CUDA. With a GPU the same tests run on it.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from _cases import build, rand, run

from attnlab import kernels
from attnlab.kernels import product

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
tg = importlib.import_module("attnlab.kernels.triton.gates")


@pytest.fixture
def triton_path(monkeypatch):
    """Routes the gate product to the Triton kernels; returns the list of calls."""
    calls = []

    def ops_for(x):
        calls.append(x.shape)
        return tg

    monkeypatch.setattr(product, "ops_for", ops_for)
    monkeypatch.setenv("ATTNLAB_BACKEND", "fast")
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gate_kernels_match_their_formulas(dtype):
    b, c, h, w = 2, 5, 3, 7
    x = rand((b, c, h, w), dtype, ties=True).to(DEVICE)
    g = rand((b, c, h, w), dtype, seed=1).to(DEVICE)
    cw = torch.rand(b, c, dtype=dtype, device=DEVICE)
    col = (slice(None), slice(None), None, None)
    y = x * cw[col]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    avg, mx, cnt = tg.channel_pool(x, True)
    torch.testing.assert_close(avg, x.mean((2, 3)), **tol)
    assert torch.equal(mx, x.amax((2, 3)))
    mean, smx, _ = tg.spatial_pool(x, cw)
    assert torch.equal(smx, y.amax(1).reshape(b, -1))
    sw = torch.rand(b, h * w, dtype=dtype, device=DEVICE)
    torch.testing.assert_close(tg.gate_apply(x, cw, sw), y * sw.view(b, 1, h, w), **tol)
    torch.testing.assert_close(tg.gate_grad_spatial(g, x, cw), (g * y).sum(1).view(b, -1), **tol)


@pytest.mark.parametrize("key", ["cbam", "cbam-paper", "cbam-max-pool", "spatial-gate"])
def test_modules_match_reference_float32(key, triton_path):
    module = build(key, 16, torch.float32).to(DEVICE)
    x = rand((2, 16, 5, 6), torch.float32).to(DEVICE)
    grad = rand((2, 16, 5, 6), torch.float32, seed=1).to(DEVICE)
    with kernels.backend("fast"):
        fast = run(module, x, grad, "fast", shortcut=None)
    ref = run(module, x, grad, "reference")
    assert triton_path, "the kernels were not called"
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(fast[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64(triton_path):
    module = build("cbam-paper", 3, torch.float64).to(DEVICE)
    x = rand((2, 3, 3, 2), torch.float64).to(DEVICE).requires_grad_()
    with kernels.backend("fast"):
        assert torch.autograd.gradcheck(lambda inp: kernels.gate(module, inp), (x,), eps=1e-6)
