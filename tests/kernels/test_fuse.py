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


@pytest.mark.parametrize("attn", ["cbam", "se", "eca", None])
@pytest.mark.parametrize(("name", "count"), [("resnet18", 8), ("resnet50", 16), ("resnet20", 9)])
def test_fuse_rewires_the_blocks_with_a_kernel_gate_or_a_foldable_norm(name, count, attn):
    model = attnlab.create_model(name, attn=attn, num_classes=5)
    keys = list(model.state_dict())
    assert kernels.fuse(model) == count
    assert kernels.is_fused(model)
    assert all(isinstance(b, kernels.FusedTail) for b in _blocks(model))
    assert list(model.state_dict()) == keys
    assert kernels.fuse(model) == 0  # already fused
    assert kernels.unfuse(model) == count
    assert not kernels.is_fused(model)
    assert {type(b) for b in _blocks(model)} <= {resnet.BasicBlock, resnet.Bottleneck}


@pytest.mark.parametrize("attn", ["ca", "gc", "scse"])
def test_blocks_without_a_kernel_gate_stay(attn):
    # neither a kernel path of their own nor an average-pool channel gate the norm folds into
    model = attnlab.create_model("resnet18", attn=attn, num_classes=5)
    assert kernels.fuse(model) == 0
    assert not kernels.is_fused(model)


@pytest.mark.parametrize(("attn", "count"), [("cbam", 8), ("se", 0), (None, 0)])
def test_without_norm_folding_only_gates_with_their_own_kernels_fuse(attn, count):
    model = attnlab.create_model("resnet18", attn=attn, num_classes=5)
    assert kernels.fuse(model, fold_norm=False) == count
    assert kernels.unfuse(model) == count


def test_blocks_whose_norm_or_activation_differs_stay():
    model = attnlab.create_model("resnet18", attn="se", num_classes=5)

    class MyNorm(torch.nn.BatchNorm2d):  # a subclass may compute something else
        pass

    model.layer1[0].bn2 = MyNorm(64)
    model.layer1[1].relu = torch.nn.GELU()
    assert kernels.fuse(model) == 6
    assert not isinstance(model.layer1[0], kernels.FusedTail)
    assert not isinstance(model.layer1[1], kernels.FusedTail)


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
@pytest.mark.parametrize(
    ("attn", "fold_norm"),
    [("cbam", True), ("cbam", False), ("se", True), ("eca", True), (None, True)],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_a_fused_network_computes_the_plain_one(name, mode, attn, fold_norm):
    # same outputs, gradients and running statistics as the unfused network on the reference
    # path, whose blocks add and apply their ReLU themselves; in float64, as training-mode
    # BatchNorm on a batch of four 1×1 maps (the last stage) magnifies float32 rounding
    torch.manual_seed(0)
    model = attnlab.create_model(name, attn=attn, num_classes=5).double()
    model.train(mode == "train")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # zero-initialised last norms: not zero;
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)  # running statistics not the defaults
            m.weight.data[1::2] *= -1  # negative scales too
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    ref = copy.deepcopy(model)
    assert kernels.fuse(model, fold_norm=fold_norm) > 0
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = model(x)
    with kernels.backend("reference"):
        y_ref = ref(x)
    if mode == "train":  # a second batch: the running statistics after two updates
        y = model(x.flip(0))
        with kernels.backend("reference"):
            y_ref = ref(x.flip(0))
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
@pytest.mark.parametrize("attn", ["se", None])
def test_a_fused_block_folds_its_norm_and_falls_back(attn):
    block = attnlab.create_model("resnet18", attn=attn).layer1[0]
    kernels.fuse(block)
    x = torch.randn(2, 64, 8, 8)
    assert block(x).grad_fn.name() == "_NormTailBackward"
    with kernels.backend("reference"):
        assert block(x).grad_fn.name() == "ReluBackward0"  # the plain tail
    out = block(x.contiguous(memory_format=torch.channels_last))
    assert out.grad_fn.name() == "ReluBackward0"


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


@needs_kernels
@pytest.mark.parametrize("attn", ["cbam", "se", "eca"])
def test_a_loss_on_the_tapped_maps_of_a_fused_network_is_differentiated_as_unfused(attn):
    # an attention regulariser: the gates' small layers stay in the autograd graph of the
    # fused tail, so the maps' gradients reach the input and every parameter
    torch.manual_seed(0)
    model = attnlab.create_model("resnet20", attn=attn).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        net, inp, maps = copy.deepcopy(model), x.clone().requires_grad_(), []
        if fused:
            assert kernels.fuse(net) == 9
        for tap in net.modules():
            if isinstance(tap, attnlab.layers.MapTap):
                tap.register_forward_hook(lambda m, i, o, seen=maps: seen.append(o))
        loss = net(inp).pow(2).sum() + sum((m.pow(2) * (k + 1)).sum() for k, m in enumerate(maps))
        grads.append(torch.autograd.grad(loss, [inp, *net.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
