"""The Triton kernels (the fast path on CUDA) against PyTorch's formulas and the reference path.

Without a GPU they run in Triton's interpreter (``TRITON_INTERPRET=1``, set while their module
is imported), on CPU tensors: ``fused`` is then pointed at them (``_ops_for``) and the
one-operator CPU path is switched off (``layer_gate``), so the modules run exactly the code
that runs on CUDA — ``_GateProduct`` / ``_CoordProduct`` calling these kernels — on another
device. With a GPU the same tests run on it, through the real dispatch.
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys

import pytest
import test_fused  # its modules and accuracy check (tests/layers is on sys.path)
import torch

from attnlab.layers import fused

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _kernels():
    """attnlab.layers.triton_gates, compiled for the GPU or, without one, interpreted (the
    session's conftest sets TRITON_INTERPRET=1 before anything imports Triton)."""
    module = importlib.import_module("attnlab.layers.triton_gates")
    if not CUDA:
        assert type(module._over_p_kernel).__name__ == "InterpretedFunction"
    return module


tg = _kernels()


@pytest.fixture
def triton_path(monkeypatch):
    """Routes the modules' fast path to the Triton kernels (on CUDA it is routed there) and
    returns the list of calls that asked for them."""
    calls = []
    ops_for = fused._ops_for

    def triton_ops(x):
        calls.append(x.shape)
        return tg if not CUDA else ops_for(x)

    monkeypatch.setattr(fused, "_ops_for", triton_ops)
    if not CUDA:
        monkeypatch.setattr(fused, "layer_gate", lambda *args, **kwargs: None)
    return calls


def _rand(shape, dtype, layout="contiguous", seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=dtype)
    if ties:  # half-integers: many entries equal to each maximum
        t = (2 * t).round() / 2
    t = t.to(DEVICE)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


SHAPES = [(2, 5, 3, 7), (2, 3, 1, 1), (2, 4, 1, 6), (1, 300, 17, 19)]
LAYOUTS = ["contiguous", "channels_last"]
DTYPES = [torch.float32, torch.float64]


def _close(a, b, dtype):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------
# Each kernel against its formula


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gate_kernels_match_their_formulas(shape, layout, dtype):
    b, c, h, w = shape
    x = _rand(shape, dtype, layout, ties=True)
    g = _rand(shape, dtype, layout, seed=1)
    cw = torch.rand(b, c, dtype=dtype, device=DEVICE)
    y = x * cw[:, :, None, None]

    avg, mx, cnt = tg.channel_pool(x, True)
    _close(avg, x.mean((2, 3)), dtype)
    assert torch.equal(mx, x.amax((2, 3)))
    assert torch.equal(cnt, (x == mx[:, :, None, None]).sum((2, 3)).to(dtype))
    avg_only, none, _ = tg.channel_pool(x, False)
    assert torch.equal(avg_only, avg) and none.numel() == 0

    mean, smx, scnt = tg.spatial_pool(x, cw)
    _close(mean, y.mean(1).reshape(b, -1), dtype)
    assert torch.equal(smx, y.amax(1).reshape(b, -1))  # the same products, so exactly
    assert torch.equal(scnt, (y == smx.view(b, 1, h, w)).sum(1).reshape(b, -1).to(dtype))

    sw = torch.rand(b, h * w, dtype=dtype, device=DEVICE)
    out = tg.gate_apply(x, cw, sw)
    _close(out, y * sw.view(b, 1, h, w), dtype)
    assert out.stride() == x.stride()
    _close(tg.gate_apply(x, cw, None), y, dtype)

    _close(tg.gate_grad_spatial(g, x, cw), (g * y).sum(1).reshape(b, -1), dtype)

    sa, se = (torch.randn(b, h * w, dtype=dtype, device=DEVICE) for _ in range(2))
    at_max = y == smx.view(b, 1, h, w)
    dy = g * sw.view(b, 1, h, w) + sa.view(b, 1, h, w) + torch.where(at_max, se.view(b, 1, h, w), 0)
    _close(tg.gate_grad_channel(g, x, cw, sw, sa, se, smx), (dy * x).sum((2, 3)), dtype)
    _close(tg.gate_grad_channel(g, x, cw, None, None, None, None), (g * x).sum((2, 3)), dtype)

    ca, ce = (torch.randn(b, c, dtype=dtype, device=DEVICE) for _ in range(2))
    col = (slice(None), slice(None), None, None)
    dx = tg.gate_grad_input(g, x, cw, sw, sa, se, smx, ca, ce, mx)
    tie = torch.where(x == mx[col], ce[col], 0)
    _close(dx, dy * cw[col] + ca[col] + tie, dtype)
    assert dx.stride() == x.stride()
    dx = tg.gate_grad_input(g, x, cw, None, None, None, None, ca, ce, None)  # SE, ECA
    _close(dx, g * cw[col] + ca[col], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_coord_kernels_match_their_formulas(shape, layout, dtype):
    x = _rand(shape, dtype, layout)
    g = _rand(shape, dtype, layout, seed=1)
    last = tg._last(x)  # the gates' layout: B×L×C for channels-last, as the C++ operators'

    def bcl(t):  # kernel layout → B×C×L
        return t.transpose(1, 2) if last else t

    def kern(t):  # B×C×L → kernel layout
        return t.transpose(1, 2).contiguous() if last else t

    ph, pw = tg.coord_pool(x)
    _close(bcl(ph), x.mean(3), dtype)
    _close(bcl(pw), x.mean(2), dtype)
    ah, aw = torch.rand_like(bcl(ph)), torch.rand_like(bcl(pw))
    out = tg.coord_apply(x, kern(ah), kern(aw))
    _close(out, x * ah[..., None] * aw[:, :, None, :], dtype)
    assert out.stride() == x.stride()
    dah, daw = tg.coord_grad_gates(g, x, kern(ah), kern(aw))
    _close(bcl(dah), (g * x * aw[:, :, None, :]).sum(3), dtype)
    _close(bcl(daw), (g * x * ah[..., None]).sum(2), dtype)
    dh, dw = torch.randn_like(ah), torch.randn_like(aw)
    dx = tg.coord_grad_input(g, kern(ah), kern(aw), kern(dh), kern(dw))
    _close(dx, g * ah[..., None] * aw[:, :, None, :] + dh[..., None] + dw[:, :, None, :], dtype)


def test_kernels_name_bad_input():
    x = _rand((2, 3, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="B×C×H×W"):
        tg.channel_pool(x[0], True)
    with pytest.raises(ValueError, match="float32 or float64"):
        tg.spatial_pool(x.half(), torch.ones(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="grad must match x"):
        tg.gate_grad_spatial(x[:1], x, torch.ones(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match="come together"):
        tg.gate_grad_channel(x, x, torch.ones(2, 3, device=DEVICE), x, None, None, None)
    with pytest.raises(ValueError, match="coordinate gates must be"):
        tg.coord_apply(x, torch.ones(2, 3, 5, device=DEVICE), torch.ones(2, 3, 5, device=DEVICE))


# ---------------------------------------------------------------------------------------------
# The modules on the Triton path against their reference path

# The configurations of test_fused.py that take the per-kernel path (all of them on CUDA).
KEYS = ["se", "eca", "cbam", "cbam-paper", "cbam-channel-only", "cbam-max-pool",
        "spatial-gate", "channel-gate", "ca"]  # fmt: skip
NODE = {"ca": "_CoordProductBackward"}


def _build(key, channels, dtype):
    return test_fused._build(key, channels, dtype).to(DEVICE)


def _run(module, x, grad, backend):
    """test_fused's: (output, input gradient, parameter gradients, the autograd node's name)."""
    *out, node = test_fused._run(module, x, grad, backend)
    return (*out, type(node).__name__)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 32, 9, 7), (3, 16, 1, 1), (2, 24, 1, 6)], ids=str)
@pytest.mark.parametrize("key", KEYS)
def test_modules_match_reference_float32(key, shape, layout, triton_path):
    module = _build(key, shape[1], torch.float32)
    x = _rand(shape, torch.float32, layout)
    grad = _rand(shape, torch.float32, layout, seed=1)
    y_ref, gx_ref, gp_ref, _ = _run(module, x, grad, "reference")
    y, gx, gp, node = _run(module, x, grad, "fast")
    assert node == NODE.get(key, "_GateProductBackward")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)
    # parameter gradients: as accurate as the float32 reference against float64
    truth = _run(copy.deepcopy(module).double(), x.double(), grad.double(), "reference")[2]
    test_fused._assert_as_accurate(gp, gp_ref, truth)
    if layout == "channels_last" and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (2, 4, 1, 1)], ids=["3x2", "1x1"])
@pytest.mark.parametrize("key", ["se", "eca", "cbam", "cbam-paper", "ca"])
def test_modules_gradcheck_float64(key, shape, layout, triton_path):
    module = _build(key, shape[1], torch.float64)
    x = _rand(shape, torch.float64, layout).requires_grad_()
    params = list(module.parameters())[: 1 if key == "ca" else 2]  # (CA's: 8×3 weights)
    with fused.backend("fast"):
        node = type(module(x).grad_fn).__name__
        assert node == NODE.get(key, "_GateProductBackward")
        assert torch.autograd.gradcheck(
            lambda inp, *_: module(inp), (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5
        )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", ["cbam", "cbam-max-pool", "spatial-gate", "channel-gate"])
def test_max_pool_ties_split_like_amax(key, layout, triton_path):
    # ReLU-zeroed maps and constant channels: many entries tie for each maximum, and PyTorch's
    # amax splits the gradient evenly among them; so must the kernels.
    module = _build(key, 8, torch.float64)
    x = _rand((2, 8, 4, 5), torch.float64).relu()
    x[:, :2] = 0.5  # whole channels constant
    x[:, :, 1, :] = 0.0  # a row where several channels tie at 0
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    grad = _rand((2, 8, 4, 5), torch.float64, layout, seed=3)
    ref = _run(module, x, grad, "reference")
    fast = _run(module, x, grad, "fast")
    assert fast[3] == "_GateProductBackward"
    for a, b in zip((fast[0], fast[1], *fast[2]), (ref[0], ref[1], *ref[2]), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("key", ["cbam", "cbam-paper", "spatial-gate", "ca"])
def test_inference_matches_reference(key, triton_path):
    module = _build(key, 16, torch.float32).eval()
    x = _rand((2, 16, 6, 7), torch.float32)
    with torch.no_grad():
        with fused.backend("reference"):
            ref = module(x)
        with fused.backend("fast"):
            out = module(x)
    assert triton_path, "the kernels were not called"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_tensors_take_the_triton_path():
    x = _rand((2, 16, 8, 8), torch.float32).requires_grad_()
    assert fused.use_fast(x)
    assert fused._ops_for(x) is tg
    assert type(_build("cbam", 16, torch.float32)(x).grad_fn).__name__ == "_GateProductBackward"
    with torch.autocast("cuda"):
        assert not fused.use_fast(x)


def test_cpu_tensors_keep_the_cpp_kernels():
    x = torch.randn(2, 3, 4, 4)
    assert fused._ops_for(x) is torch.ops.attnlab_fast
    assert not fused.use_fast(x.to("meta"))  # neither CPU nor CUDA: the reference path


# Every kernel variant the wrappers launch, compiled for an H100 (sm_90) by Triton's own
# compiler and ptxas, which need no GPU: what the interpreter cannot check (types, layouts,
# register allocation). In a fresh process, without the interpreter.
_COMPILE = r"""
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from attnlab.layers import triton_gates as tg

VARIANTS = {
    tg._over_p_kernel: [dict(GRAD=g, WITH_MAX=m, SPATIAL=s)
                        for g, m, s in [(0, 1, 0), (0, 0, 0), (1, 0, 1), (1, 0, 0)]],
    tg._over_c_kernel: [dict(GRAD=0), dict(GRAD=1)],
    tg._pointwise_kernel: [dict(GRAD=g, SPATIAL=s, CMAX=c)
                           for g, s, c in [(0, 1, 0), (0, 0, 0), (1, 1, 1), (1, 0, 1), (1, 0, 0)]],
    tg._coord_rows_kernel: [dict(GRAD=0), dict(GRAD=1)],
    tg._coord_pointwise_kernel: [dict(GRAD=0), dict(GRAD=1)],
}
TILES = {"BC": 16, "BP": 256, "BW": 64}  # NCHW stage-1 tiles (and a 64-wide coordinate map)
done = 0
for kernel, variants in VARIANTS.items():
    assert type(kernel).__name__ == "JITFunction", type(kernel)
    params = inspect.signature(kernel.fn).parameters
    for flags in variants:
        for ty in ("fp32", "fp64"):
            consts = {**flags, **{k: v for k, v in TILES.items() if k in params}}
            sig = {n: "constexpr" if n in consts else f"*{ty}" if n.endswith("_ptr") else "i32"
                   for n in params}
            assert set(consts) == {n for n, p in params.items() if "constexpr" in str(p.annotation)}
            target = GPUTarget("cuda", 90, 32)
            compiled = triton.compile(ASTSource(kernel, sig, consts), target=target)
            assert compiled.asm.get("cubin"), kernel.fn.__name__
            done += 1
print("compiled", done)
"""


@pytest.mark.skipif(CUDA, reason="the GPU tests above launch them")
def test_kernels_compile_for_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # (the default; set, so Triton does not warn)
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == str(2 * (4 + 2 + 5 + 2 + 2))
