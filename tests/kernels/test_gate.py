"""The kernels' gate product against each module's reference path (its own PyTorch code)."""

from __future__ import annotations

import copy

import pytest
import torch
from _cases import BUILDERS, build, rand, run

from attnlab import kernels
from attnlab.layers import CBAM, ECA, SE, GlobalContext
from attnlab.layers.maps import MapTap

pytestmark = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")

SHAPES = [(2, 16, 9, 7), (3, 8, 1, 1), (2, 12, 1, 6), (1, 300, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("key", list(BUILDERS))
def test_training_call_matches_reference_float32(key, shape):
    module = build(key, shape[1], torch.float32)
    x, grad = rand(shape, torch.float32), rand(shape, torch.float32, seed=1)
    assert kernels.enabled(x, module)
    fast, ref = run(module, x, grad, "fast"), run(module, x, grad, "reference")
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
    # the input gradient sums up to C·P terms of either order: float32 rounding, not 1e-6
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(fast[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # sums over B·P, reordered
    for a, b in zip(fast[3], ref[3], strict=True):  # running statistics, step count
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", list(BUILDERS))
def test_ties_split_like_amax_float64(key):
    # ReLU-zeroed maps, constant channels and rows: many entries tie for each maximum, and
    # amax splits the gradient evenly among them; so must the kernels.
    module = build(key, 8, torch.float64)
    x = rand((2, 8, 4, 5), torch.float64, ties=True).relu()
    x[:, :2] = 0.5
    x[:, :, 1, :] = 0.0
    grad = rand((2, 8, 4, 5), torch.float64, seed=3)
    fast, ref = run(module, x, grad, "fast"), run(module, x, grad, "reference")
    for a, b in zip((*fast[:2], *fast[2]), (*ref[:2], *ref[2]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (2, 4, 1, 1)], ids=["3x2", "1x1"])
@pytest.mark.parametrize("key", ["cbam", "cbam-paper", "cbam-max-pool", "spatial-gate"])
def test_gradcheck_float64(key, shape):
    module = build(key, shape[1], torch.float64)
    x = rand(shape, torch.float64).requires_grad_()
    params = list(module.parameters())[:2]
    with kernels.backend("fast"):
        assert type(module(x).grad_fn).__name__ == "_GateProductBackward"
        assert torch.autograd.gradcheck(
            lambda inp, *_: module(inp), (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5
        )


@pytest.mark.parametrize("key", ["cbam", "spatial-gate"])
def test_residual_tail_gradcheck_float64(key):
    module = build(key, 4, torch.float64)
    x = rand((2, 4, 3, 3), torch.float64).requires_grad_()
    shortcut = rand((2, 4, 3, 3), torch.float64, seed=2).requires_grad_()
    with kernels.backend("fast"):
        assert torch.autograd.gradcheck(
            lambda a, b: kernels.gate(module, a, b), (x, shortcut), eps=1e-6, atol=1e-7
        )


def test_residual_tail_matches_reference_float32():
    module = build("cbam", 16, torch.float32)
    x, grad = rand((2, 16, 5, 6), torch.float32), rand((2, 16, 5, 6), torch.float32, seed=1)
    shortcut = rand((2, 16, 5, 6), torch.float32, seed=2)
    fast = run(module, x, grad, "fast", shortcut)
    ref = run(module, x, grad, "reference", shortcut)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", list(BUILDERS))
def test_inference_matches_reference(key):
    module = build(key, 16, torch.float32).eval()
    x = rand((2, 16, 6, 7), torch.float32)
    with torch.no_grad():
        with kernels.backend("reference"):
            ref = module(x)
        with kernels.backend("fast"):
            out = module(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_frozen_input_and_frozen_module():
    module = build("cbam", 8, torch.float32)
    x = rand((2, 8, 4, 4), torch.float32)
    y = module(x)  # x needs no gradient, the parameters do
    y.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    module.requires_grad_(False)
    with kernels.backend("reference"):
        ref = module(x)
    torch.testing.assert_close(module(x), ref, rtol=1e-5, atol=1e-6)


def test_map_taps_see_the_maps_the_output_used():
    module = build("cbam", 8, torch.float32).eval()
    seen = {}
    module.spatial_gate.spatial_map.register_forward_hook(lambda m, i, o: seen.update(s=o))
    x = rand((2, 8, 5, 5), torch.float32)
    with torch.no_grad():
        out = module(x)
        with kernels.backend("reference"):
            ref_map = module.spatial_gate.attention(x * module.channel_gate.attention(x))
    assert seen["s"].shape == (2, 1, 5, 5)
    torch.testing.assert_close(seen["s"], ref_map, rtol=1e-5, atol=1e-6)
    assert out.shape == x.shape


def _tapped_run(module, x, backend, loss_of):
    """x's and the parameters' gradients of loss_of(output, maps the taps saw)."""
    module, x, maps = copy.deepcopy(module), x.clone().requires_grad_(), []
    for tap in module.modules():
        if isinstance(tap, MapTap):
            tap.register_forward_hook(lambda m, i, o: maps.append(o))
    with kernels.backend(backend):
        y = module(x)
    return loss_of(y, maps, x, list(module.parameters()))


def _assert_same(fast, ref):
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_output", [True, False], ids=["maps+output", "maps"])
@pytest.mark.parametrize("key", ["cbam", "cbam-max-pool", "spatial-gate"])
def test_a_loss_on_the_tapped_maps_is_differentiated_as_on_the_reference_path(key, with_output):
    # the small layers sit in the same autograd graph as the kernels' passes, so a loss on the
    # attention maps (an attention regulariser) reaches x and the parameters through them
    module, x = build(key, 8, torch.float64), rand((2, 8, 4, 5), torch.float64, ties=True)

    def loss_of(y, maps, x, params):
        loss = sum((m.pow(2) * (i + 1)).sum() for i, m in enumerate(maps))
        loss = loss + (y.pow(2).sum() if with_output else 0)
        return torch.autograd.grad(loss, [x, *params], allow_unused=True)

    _assert_same(
        _tapped_run(module, x, "fast", loss_of), _tapped_run(module, x, "reference", loss_of)
    )


def test_partial_backwards_over_a_retained_graph():
    # a first backward that reaches the parameters only, then one from a map to x alone: the
    # second sees none of the first's terms
    module, x = build("cbam", 8, torch.float64), rand((2, 8, 4, 5), torch.float64)

    def loss_of(y, maps, x, params):
        first = torch.autograd.grad(y.pow(2).sum(), params, retain_graph=True)
        second = torch.autograd.grad(maps[0].sum() + maps[1].pow(2).sum(), x, retain_graph=True)
        third = torch.autograd.grad(y.pow(2).sum(), x)
        return [*first, *second, *third]

    _assert_same(
        _tapped_run(module, x, "fast", loss_of), _tapped_run(module, x, "reference", loss_of)
    )


class _GeneralOps:
    """The operator set of the Triton kernels (no gate_apply_relu, gate_grad_product or
    gate_grad_pool): the CPU operators, the two general backward passes by their formulas."""

    def __init__(self, ops):
        for name in ("channel_pool", "spatial_pool", "gate_apply", "gate_grad_input"):
            setattr(self, name, getattr(ops, name))

    @staticmethod
    def gate_grad_spatial(g, x, cw):
        return (g * x * cw[:, :, None, None]).sum(1).flatten(1)

    @staticmethod
    def gate_grad_channel(g, x, cw, sw, sa, se, smx):
        if sw is None:
            return (g * x).sum((2, 3))
        b, _, h, w = x.shape
        sw, sa, se, smx = (t.view(b, 1, h, w) for t in (sw, sa, se, smx))
        at_max = x * cw[:, :, None, None] == smx
        return (x * (g * sw + sa + torch.where(at_max, se, 0))).sum((2, 3))


@pytest.mark.parametrize("key", ["cbam", "cbam-avg-pool", "spatial-gate"])
def test_kernels_without_the_fused_backward_passes_compose_the_general_ones(key, monkeypatch):
    # the backward on an operator set like the Triton kernels': the masked gradient, ∂L/∂sw and
    # the two shares of ∂L/∂cw from the general passes
    general = _GeneralOps(kernels.cpu.ops())
    monkeypatch.setattr(kernels.product, "ops_for", lambda x: general)
    module = build(key, 8, torch.float64)
    x = rand((2, 8, 4, 5), torch.float64, ties=True)
    grad, shortcut = rand(x.shape, torch.float64, seed=1), rand(x.shape, torch.float64, seed=2)
    fast = run(module, x, grad, "fast", shortcut)
    ref = run(module, x, grad, "reference", shortcut)
    _assert_same([fast[0], fast[1], *fast[2]], [ref[0], ref[1], *ref[2]])


def test_modules_without_a_kernel_path_decline():
    x = rand((2, 16, 4, 4), torch.float32)
    assert not kernels.enabled(x, GlobalContext(16))
    assert not kernels.enabled(x, CBAM(16, order="parallel"))
    assert not kernels.enabled(x, CBAM(16, spatial=False))
    with pytest.raises(ValueError, match="GlobalContext has no kernel path"):
        kernels.gate(GlobalContext(16), x)


def test_channel_gates_offer_their_pooled_gate_only():
    # SE and ECA: a channel gate read from the average pool (folded with a block's norm by
    # kernels.fuse); their own forward stays on their equations
    for module in (SE(16), ECA(16)):
        spec = module.kernel_spec()
        assert spec.spatial is None and not spec.channel_max
        z = torch.randn(2, 16)
        torch.testing.assert_close(
            spec.channel(z, None),
            module.attention(z[:, :, None, None] * torch.ones(1, 1, 3, 3)).flatten(1),
        )
        assert module(torch.randn(2, 16, 3, 3)).grad_fn.name() == "MulBackward0"


def test_a_mismatched_shortcut_is_refused():
    module = build("cbam", 8, torch.float32)
    x = rand((2, 8, 4, 4), torch.float32)
    with pytest.raises(ValueError, match="shortcut must match x"):
        kernels.gate(module, x, x[:1])


def test_one_value_per_spatial_norm_gives_a_clear_error():
    module = build("cbam", 8, torch.float32).train()
    with pytest.raises(ValueError, match="SpatialGate"):
        module(rand((1, 8, 1, 1), torch.float32))
