"""Self-attention segmentation heads (NL, CCNet, PSA): names, shapes, structure, config,
gradients, the shared frame against a hand-wired forward."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab.layers import CrissCrossAttention, NonLocalBlock, PolarizedSelfAttention
from attnlab.models.danet import BACKBONES
from attnlab.models.seg_heads import SEG_HEADS, AttentionHead, AttentionSegNet
from attnlab.segment.loss import segmentation_loss


def test_registered_names():
    names = attnlab.list_models(family="seg_heads")
    assert len(names) == len(SEG_HEADS) * len(BACKBONES) == 15
    assert {"nl_resnet50", "ccnet_resnet50", "psa_resnet50", "ccnet_resnet20"} <= set(names)
    assert set(names) <= set(attnlab.list_models(task="segmentation"))
    assert "fcn_resnet50" in attnlab.list_models(task="segmentation")  # the baseline


@pytest.mark.parametrize("head", list(SEG_HEADS))
@pytest.mark.parametrize("backbone", ["resnet18", "resnet20"])
def test_shapes_outputs_and_rebuild(head, backbone):
    torch.manual_seed(0)
    model = attnlab.create_model(f"{head}_{backbone}", num_classes=4)
    size = (32, 40) if backbone == "resnet20" else (64, 48)
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert sorted(out) == ["out"] and out["out"].shape == (2, 4, *size)
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 4, *size)
        assert model(x[:1]).shape == (1, 4, *size)
    rebuilt = attnlab.create_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), y)
    assert model.config["name"] == f"{head}_{backbone}"


EXPECTED = {"nl": NonLocalBlock, "ccnet": CrissCrossAttention, "psa": PolarizedSelfAttention}


@pytest.mark.parametrize("head", list(SEG_HEADS))
def test_head_structure_resnet50(head):
    model = attnlab.create_model(f"{head}_resnet50", num_classes=19)
    assert model.output_stride == 8
    h = model.head
    assert isinstance(h, AttentionHead) and h.inter_channels == 512
    assert isinstance(h.attention, EXPECTED[head])
    assert h.attention.channels == 512
    assert h.reduce[0].in_channels == 2048 and h.reduce[0].kernel_size == (3, 3)
    assert h.bottleneck[0].in_channels == 2048 + 512 and h.bottleneck[0].out_channels == 512
    assert h.classifier[1].out_channels == 19
    assert model.attention_modules()[0] is h.attention
    if head == "nl":
        assert (h.attention.inter_channels, h.attention.scale) == (256, True)
        assert not h.attention.sub_sample and h.attention.mode == "embedded_gaussian"
    if head == "ccnet":
        assert h.attention.recurrence == 2 and h.attention.query.out_channels == 64


def test_head_forward_equals_hand_wired_frame():
    torch.manual_seed(1)
    head = AttentionHead(32, 3, attention="ccnet", head_kwargs={"recurrence": 1}).eval()
    with torch.no_grad():
        head.attention.gamma.fill_(0.7)
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        y = head.project(head.attention(head.reduce(x)))
        expected = head.classifier[1](head.bottleneck(torch.cat([x, y], 1)))  # eval: no dropout
        torch.testing.assert_close(head(x)["out"], expected)
    assert head.attention.recurrence == 1  # head_kwargs reach the module


def test_gradients_reach_head_parameters_and_loss_runs():
    torch.manual_seed(2)
    model = attnlab.create_model("nl_resnet20", num_classes=3).train()
    with torch.no_grad():
        model.head.attention.norm.weight.fill_(0.5)  # leave the identity init
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    segmentation_loss(model(x, aux=True), target).backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    groups = model.parameter_groups()
    assert sum(p.numel() for p in groups["head"]) == sum(p.numel() for p in model.head.parameters())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="AttentionSegNet: head must be one of"):
        AttentionSegNet("resnet18", head="aspp")
    with pytest.raises(TypeError, match="ccnet_resnet18: head and backbone are fixed"):
        attnlab.create_model("ccnet_resnet18", head="nl")
    with pytest.raises(TypeError, match="psa_resnet18"):
        attnlab.create_model("psa_resnet18", head_kwargs={"no_such_option": 1})
    with pytest.raises(ValueError, match="AttentionHead: attention must be one of"):
        AttentionHead(16, 2, attention="pam")


def test_nl_head_keeps_its_memory_linear_path_at_full_resolution():
    # 1024×2048 at output stride 8: N = 128·256; the block's budget keeps every score block
    # at most max_block_elements, so the head never forms the N×N matrix.
    nl = attnlab.create_model("nl_resnet50").head.attention
    n = 128 * 256
    assert nl.block_size is None and nl.max_block_elements < n * n
