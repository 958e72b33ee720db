"""kernels.fuse / unfuse: the ResNet blocks' tail in the gate's pass, same keys, same results."""

from __future__ import annotations

import copy

import pytest
import torch

import attnlab
from attnlab import kernels
from attnlab.models import resnet

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="CPU kernels unavailable")


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (resnet.BasicBlock, resnet.Bottleneck))]


@pytest.mark.parametrize(("name", "count"), [("resnet18", 8), ("resnet50", 16), ("resnet20", 9)])
def test_fuse_rewires_the_blocks_with_a_kernel_gate(name, count):
    model = attnlab.create_model(name, attn="cbam", num_classes=5)
    keys = list(model.state_dict())
    assert kernels.fuse(model) == count
    assert kernels.is_fused(model)
    assert all(isinstance(b, kernels.FusedTail) for b in _blocks(model))
    assert list(model.state_dict()) == keys
    assert kernels.fuse(model) == 0  # already fused
    assert kernels.unfuse(model) == count
    assert not kernels.is_fused(model)
    assert {type(b) for b in _blocks(model)} <= {resnet.BasicBlock, resnet.Bottleneck}


@pytest.mark.parametrize("attn", ["se", "eca", None])
def test_blocks_without_a_kernel_gate_stay(attn):
    model = attnlab.create_model("resnet18", attn=attn, num_classes=5)
    assert kernels.fuse(model) == 0
    assert not kernels.is_fused(model)


def test_checkpoints_load_both_ways():
    plain = attnlab.create_model("resnet18", attn="cbam", num_classes=5)
    fused = copy.deepcopy(plain)
    kernels.fuse(fused)
    fused.load_state_dict(plain.state_dict())  # strict: same keys
    plain.load_state_dict(fused.state_dict())
    twin = copy.deepcopy(fused)  # a fused model copies as one
    assert kernels.is_fused(twin)


def test_fuse_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="kernels.fuse: expected an nn.Module"):
        kernels.fuse("resnet50")
    with pytest.raises(TypeError, match="kernels.unfuse: expected an nn.Module"):
        kernels.unfuse(None)


@needs_kernels
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_a_fused_network_computes_the_plain_one(name, mode):
    # same outputs, gradients and running statistics as the unfused network on the reference
    # path, whose blocks add and apply their ReLU themselves; in float64, as training-mode
    # BatchNorm on a batch of two 1×1 maps (the last stage) magnifies float32 rounding
    torch.manual_seed(0)
    model = attnlab.create_model(name, attn="cbam", num_classes=5).double()
    model.train(mode == "train")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 1:
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)  # CBAM's spatial norm: not zero
    ref = copy.deepcopy(model)
    kernels.fuse(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = model(x)
    with kernels.backend("reference"):
        y_ref = ref(x)
    tol = dict(rtol=1e-7, atol=1e-9)  # float64 sums in another order, through up to 16 blocks
    torch.testing.assert_close(y, y_ref, **tol)
    if mode == "train":
        y.square().mean().backward()
        y_ref.square().mean().backward()
        for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            # gradients reach 1e5 through those norms, which magnify rounding by up to 1e8: the
            # tolerance scales with the largest
            scaled = dict(rtol=1e-7, atol=1e-6 * float(q.grad.abs().max()))
            torch.testing.assert_close(p.grad, q.grad, **scaled, msg=n)
    for b, c in zip(model.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, c, **tol)


@needs_kernels
def test_a_fused_block_takes_the_kernels_and_falls_back():
    block = attnlab.create_model("resnet18", attn="cbam").layer1[0]
    kernels.fuse(block)
    x = torch.randn(2, 64, 8, 8)
    assert block(x).grad_fn.name() == "_GateProductBackward"
    with kernels.backend("reference"):
        assert block(x).grad_fn.name() != "_GateProductBackward"  # the plain tail
    out = block(x.contiguous(memory_format=torch.channels_last))  # no kernel: the plain tail
    assert out.grad_fn.name() != "_GateProductBackward"
