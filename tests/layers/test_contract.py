"""The one contract every registered attention module keeps (DESIGN.md).

Parametrized over the registry, so a module is tested here the day it is registered, plus
the presets and variants where the authors' code and the paper differ.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.layers import MapTap

CHANNELS = 32

# Every registered name with its defaults, plus the named alternatives.
CASES = [(name, {}) for name in attnlab.list_attention()] + [
    ("cbam", {"preset": "paper"}),
    ("cbam", {"preset": "yolo"}),
    ("cbam", {"order": "spatial-channel"}),
    ("cbam", {"order": "parallel"}),
    ("cbam", {"spatial": False}),
    ("bam", {"preset": "official"}),
    ("cam", {"variant": "paper"}),
    ("ca", {"preset": "yolo"}),
    ("eca", {"k_size": 5}),
    ("pam", {"block_size": 7}),
    ("gc", {"fusion": ("mul",)}),
    ("gc", {"fusion": ("mul", "add"), "pooling": "avg"}),
    ("ge", {"extent": 2}),
    ("ge", {"variant": "theta", "extent": 2}),
    ("ge", {"variant": "theta+", "extent": 4}),
    ("simam", {"variance": "biased"}),
    ("triplet", {"spatial": False}),
    ("scse", {"preset": "conference"}),
    ("scse", {"preset": "smp"}),
    ("scse", {"mode": "cse"}),
    ("scse", {"mode": "sse"}),
    ("sge", {"variance": "biased"}),
    ("srm", {"variance": "biased"}),
    ("nl", {"preset": "paper"}),
    ("nl", {"mode": "gaussian"}),
    ("nl", {"mode": "dot_product"}),
    ("nl", {"mode": "concatenation"}),
    ("nl", {"sub_sample": True}),
    ("nl", {"sub_sample": True, "preset": "paper"}),
    ("nl", {"block_size": 7}),
    ("nl", {"mode": "dot_product", "block_size": 7}),
    ("nl", {"mode": "concatenation", "block_size": 7, "sub_sample": True}),
    ("cc", {"recurrence": 1}),
    ("a2", {"zero_init": True, "norm_layer": nn.BatchNorm2d}),
    ("psa", {"layout": "sequential"}),
    ("psa", {"preset": "official"}),
    ("psa", {"preset": "official", "layout": "sequential"}),
    ("effattn", {"head_count": 4}),
    ("effattn", {"normalization": "scaling"}),
    ("sk", {"branches": 3}),
    ("fca", {"preset": "native", "rd_ratio": 1 / 4}),
    ("fca", {"freq_sel": "low4", "dct_size": 4}),
    ("sa", {"groups": 4}),
    ("ema", {"groups": 8}),
    ("ela", {"preset": "tiny"}),
    ("ela", {"preset": "small"}),
    ("ela", {"preset": "large"}),
    ("gam", {"preset": "popular"}),
    ("gam", {"groups": 4}),
    ("se", {"preset": "timm"}),
    ("eca", {"preset": "timm"}),
    ("eca", {"preset": "ceca"}),
    ("cbam", {"preset": "timm"}),
    ("cbam", {"preset": "timm-light"}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]


def build(name: str, kwargs: dict, channels: int = CHANNELS, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return attnlab.create_attention(name, channels, **kwargs)


def perturb_(module: nn.Module, seed: int = 1) -> nn.Module:
    """Moves every parameter away from its init.

    Zero inits (DANet's γ, the official CBAM spatial BN weight) make some gradients exactly 0
    and some outputs equal to the input at init, by design; perturbing them lets the tests
    below see every path.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(1, 1), (13, 17), (8, 8)])
def test_shape_and_memory_formats(name, kwargs, batch, size):
    module = perturb_(build(name, kwargs)).eval()
    x = torch.randn(batch, CHANNELS, *size)
    with torch.no_grad():
        y = module(x)
        y_cl = module(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    # Convolutions on NHWC accumulate in another order than on NCHW; PAM's softmax over all
    # positions amplifies those last-bit differences to ~1e-6 absolute. GAM's gate logits are
    # sums of 1,568 products (7×7 over 32 channels) of ~1e2 with perturbed weights: seen 5e-5.
    tol = 1e-4 if name == "gam" else 1e-5
    torch.testing.assert_close(y_cl, y, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_bfloat16_matches_float32(name, kwargs):
    module = perturb_(build(name, kwargs)).eval()
    # Small inputs keep DANet CAM's energies (sums of squares over positions) unsaturated,
    # so bf16 rounding does not flip its softmax.
    x = 0.1 * torch.randn(2, CHANNELS, 13, 17)
    with torch.no_grad():
        reference = module(x)
        y = module.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    # bf16 keeps 8 bits of mantissa: ~0.4% per op; a few chained ops stay within 3%.
    torch.testing.assert_close(y.float(), reference, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("size", [(1, 1), (5, 3)])
def test_training_mode_batch_one_works_or_explains(name, kwargs, size):
    module = build(name, kwargs).train()
    x = torch.randn(1, CHANNELS, *size)
    try:
        y = module(x)
    except ValueError as err:
        message = str(err)
        assert "BatchNorm" in message and ".eval()" in message and "None" in message, message
        assert type(module).__name__ in message or "Gate" in message, message
    else:
        assert y.shape == x.shape


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, kwargs):
    # Eval mode: in training, a bias feeding a BatchNorm (BAM's and CA's convs, as in the
    # authors' code) is cancelled by the batch-mean subtraction, so its gradient is exactly 0.
    module = perturb_(build(name, kwargs)).eval()
    x = torch.randn(2, CHANNELS, 6, 5, requires_grad=True)
    module(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_graph_connected_at_init(name, kwargs):
    module = build(name, kwargs).train()
    # The input takes part in the graph, so parameter-free modules (SimAM, GE-θ⁻) backward too.
    module(torch.randn(2, CHANNELS, 6, 5, requires_grad=True)).sum().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_backward_is_deterministic(name, kwargs):
    assert not any(
        isinstance(m, (nn.AdaptiveMaxPool2d, nn.MaxPool2d)) for m in build(name, kwargs).modules()
    ), "global max pooling must be amax (adaptive max pool has no deterministic CUDA backward)"
    grads = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            module = perturb_(build(name, kwargs)).train()
            x = torch.randn(2, CHANNELS, 7, 6, generator=torch.Generator().manual_seed(3))
            x.requires_grad_(True)
            module(x).square().sum().backward()
            grads.append([x.grad] + [p.grad for p in module.parameters()])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


# One compile per registered name (its default settings): inductor on 2 cores costs seconds.
@pytest.mark.parametrize("name", attnlab.list_attention())
def test_compile_fullgraph_matches_eager(name):
    torch._dynamo.reset()
    module = perturb_(build(name, {})).train()
    compiled = torch.compile(module, fullgraph=True)
    # SK's fuse BatchNorm and SRM's BatchNorm normalise one pooled value per sample and
    # channel: a batch of two would make them magnify float32 rounding beyond any useful
    # tolerance
    batch = 8 if name in ("sk", "srm") else 2
    x = torch.randn(batch, CHANNELS, 9, 7, generator=torch.Generator().manual_seed(0))
    x_eager = x.clone().requires_grad_(True)
    x_compiled = x.clone().requires_grad_(True)
    # Eager backward first: eager BatchNorm saves the running stats for backward, and the
    # compiled training forward updates them in place.
    y_eager = module(x_eager)
    y_eager.square().sum().backward()
    y_compiled = compiled(x_compiled)
    y_compiled.square().sum().backward()
    # Inductor fuses and reorders float32 reductions; results agree to rounding.
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    # Gradients pass through BatchNorm's batch reductions, whose order inductor picks by thread
    # count and vector width: seen 1.07e-5 apart on an element of ~5e-3 with one thread.
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-4, atol=5e-5)


BAD_INPUTS = [
    (torch.randn(2, CHANNELS + 1, 5, 5), ValueError, [str(CHANNELS), str(CHANNELS + 1)]),
    (torch.randn(2, CHANNELS, 5), ValueError, ["4-D", "3-D"]),
    (torch.randn(2, CHANNELS, 5, 5, 5), ValueError, ["4-D", "5-D"]),
    (torch.ones(2, CHANNELS, 5, 5, dtype=torch.int64), TypeError, ["floating", "int64"]),
    (torch.randn(0, CHANNELS, 5, 5), ValueError, ["non-empty", "(0, 32, 5, 5)"]),
    (torch.randn(2, CHANNELS, 0, 5), ValueError, ["non-empty", "(2, 32, 0, 5)"]),
    ([[1.0]], TypeError, ["torch.Tensor", "list"]),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES[: len(attnlab.list_attention())])
@pytest.mark.parametrize(("x", "error", "needles"), BAD_INPUTS)
def test_bad_input_is_refused_with_a_clear_message(name, kwargs, x, error, needles):
    module = build(name, kwargs)
    with pytest.raises(error) as info:
        module(x)
    message = str(info.value)
    assert message.startswith(type(module).__name__ + ":"), message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("name", attnlab.list_attention())
@pytest.mark.parametrize(
    ("channels", "error"), [(0, ValueError), ("32", TypeError), (True, TypeError)]
)
def test_bad_channels_argument(name, channels, error):
    with pytest.raises(error, match="channels"):
        attnlab.create_attention(name, channels)


@pytest.mark.parametrize("name", attnlab.list_attention())
def test_every_module_exposes_a_map_tap(name):
    taps = [m for m in build(name, {}).modules() if isinstance(m, MapTap)]
    assert taps, f"{name} has no observable map"
    assert all(not tap.observed for tap in taps)
