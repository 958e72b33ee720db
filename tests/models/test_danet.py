"""DANet segmentation models: shapes, outputs per mode, head structure, config, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.layers import ChannelAttention, PositionAttention
from attnlab.models.danet import BACKBONES, HEADS, DANet


def _input(model, batch=2):
    # non-square; CIFAR backbones (stride 4) get smaller maps
    size = (32, 40) if model.config["output_stride"] is None else (64, 48)
    return torch.randn(batch, 3, *size)


def test_registered_names():
    names = attnlab.list_models(family="danet")
    assert len(names) == len(HEADS) * len(BACKBONES) == 20
    assert {
        "danet_resnet50",
        "danet_resnet101",
        "fcn_resnet50",
        "pam_resnet18",
        "cam_resnet20",
    } <= set(names)
    assert "resnet50" not in names


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", ["resnet18", "resnet20"])
def test_shapes_and_outputs_per_mode(head, backbone):
    torch.manual_seed(0)
    model = attnlab.create_model(f"{head}_{backbone}", num_classes=5)
    x = _input(model)
    train_out = model.train()(x)
    keys = ["cam", "out", "pam"] if head == "danet" else ["out"]
    assert sorted(train_out) == keys
    assert all(v.shape == (2, 5, *x.shape[-2:]) for v in train_out.values())
    model.eval()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, *x.shape[-2:])
    # aux chooses explicitly, whatever the mode
    assert sorted(model(x, aux=True)) == keys
    assert torch.equal(model(x, aux=True)["out"], out)
    assert isinstance(model.train()(x, aux=False), torch.Tensor)
    one = model.eval()(x[:1])
    assert one.shape == (1, 5, *x.shape[-2:])


@pytest.mark.parametrize("name", ["danet_resnet34", "danet_resnet50", "fcn_resnet50"])
def test_bigger_backbones_eval_shapes(name):
    model = attnlab.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 40)).shape == (1, 3, 64, 40)
    assert model.forward_features(torch.randn(1, 3, 64, 40)).shape[-2:] == (8, 5)


def test_danet_resnet101_builds_and_runs():
    model = attnlab.create_model("danet_resnet101", num_classes=19, output_stride=16).eval()
    assert model.output_stride == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 64)).shape == (1, 19, 48, 64)


def test_odd_input_sizes():
    model = attnlab.create_model("danet_resnet18", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 4, 37, 53)


def test_head_structure_resnet50():
    model = attnlab.create_model("danet_resnet50", num_classes=19)
    head = model.head
    assert model.backbone.feature_info[-1]["channels"] == 2048 and model.output_stride == 8
    assert head.inter_channels == 512
    for branch, module_type in (("pam", PositionAttention), ("cam", ChannelAttention)):
        reduce, project = getattr(head, f"{branch}_reduce"), getattr(head, f"{branch}_project")
        assert isinstance(getattr(head, branch), module_type)
        for block, in_ch in ((reduce, 2048), (project, 512)):
            conv, bn, act = block
            assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (in_ch, 512, (3, 3))
            assert conv.bias is None and isinstance(bn, nn.BatchNorm2d)
            assert isinstance(act, nn.ReLU)
    assert head.pam.query.out_channels == 64 and head.pam.value.out_channels == 512
    assert head.cam.variant == "official"
    classifiers = [head.pam_classifier, head.cam_classifier, head.fused_classifier]
    for dropout, conv in classifiers:
        assert isinstance(dropout, nn.Dropout2d) and dropout.p == 0.1
        assert conv.kernel_size == (1, 1) and conv.bias is not None
        assert (conv.in_channels, conv.out_channels) == (512, 19)
    dropouts = [m for m in head.modules() if isinstance(m, nn.Dropout2d)]
    assert len(dropouts) == 3


def test_fused_output_is_classifier_of_branch_sum():
    torch.manual_seed(0)
    model = attnlab.create_model("danet_resnet20", num_classes=3).eval()
    head, feats = model.head, torch.randn(2, 64, 8, 10)
    pam = head.pam_project(head.pam(head.pam_reduce(feats)))
    cam = head.cam_project(head.cam(head.cam_reduce(feats)))
    out = head(feats)
    torch.testing.assert_close(out["out"], head.fused_classifier(pam + cam))
    torch.testing.assert_close(out["pam"], head.pam_classifier(pam))


def test_single_branch_and_fcn_heads():
    pam = attnlab.create_model("pam_resnet50", num_classes=19).head
    assert pam.branches == ("pam",) and not hasattr(pam, "cam") and pam.fused_classifier is None
    cam = attnlab.create_model("cam_resnet50", num_classes=19).head
    assert cam.branches == ("cam",) and not hasattr(cam, "pam")
    fcn = attnlab.create_model("fcn_resnet50", num_classes=19).head
    conv, bn, relu = fcn.block
    dropout, cls = fcn.classifier
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (
        2048,
        512,
        (3, 3),
        None,
    )
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert isinstance(dropout, nn.Dropout2d) and dropout.p == 0.1
    assert (cls.in_channels, cls.out_channels, cls.kernel_size) == (512, 19, (1, 1))


def test_gradients_reach_pam_and_cam_gamma():
    torch.manual_seed(0)
    model = attnlab.create_model("danet_resnet18", num_classes=3).train()
    out = model(torch.randn(2, 3, 48, 40))
    sum(v.square().mean() for v in out.values()).backward()
    assert model.head.pam.gamma.grad.abs().item() > 0
    assert model.head.cam.gamma.grad.abs().item() > 0
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]


def test_config_rebuilds_the_model():
    model = attnlab.create_model(
        "danet_resnet50", num_classes=7, multi_grid=(1, 2, 4), cam_variant="paper"
    )
    assert model.config["name"] == "danet_resnet50" and model.config["multi_grid"] == [1, 2, 4]
    rebuilt = attnlab.create_model(**model.config)
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert rebuilt.head.cam.variant == "paper"
    cifar = attnlab.create_model("fcn_resnet20", num_classes=3)
    assert cifar.config["output_stride"] is None and cifar.output_stride == 4
    assert attnlab.create_model(**cifar.config).config == cifar.config


def test_multi_grid_dilations():
    model = attnlab.create_model("danet_resnet50", multi_grid=(1, 2, 4))
    assert [b.conv2.dilation for b in model.backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert [b.conv2.padding for b in model.backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    plain = attnlab.create_model("danet_resnet50")
    assert [b.conv2.dilation for b in plain.backbone.layer4] == [(2, 2), (4, 4), (4, 4)]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 48)).shape == (1, 19, 40, 48)
    small = attnlab.create_model("danet_resnet18", multi_grid=(1, 2))
    assert [b.conv1.dilation for b in small.backbone.layer4] == [(4, 4), (8, 8)]
    with pytest.raises(ValueError, match="one factor per block"):
        attnlab.create_model("danet_resnet18", multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="multi_grid needs an ImageNet ResNet"):
        attnlab.create_model("danet_resnet20", multi_grid=(1, 2, 4))


def test_bad_options():
    with pytest.raises(ValueError, match="head must be one of"):
        DANet("resnet18", head="psp")
    with pytest.raises(TypeError, match="danet_resnet50"):
        attnlab.create_model("danet_resnet50", head="fcn")
    with pytest.raises(ValueError, match="num_classes"):
        attnlab.create_model("danet_resnet18", num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        attnlab.create_model("danet_resnet18", dropout=1.5)
    with pytest.raises(ValueError, match="B×3×H×W"):
        attnlab.create_model("fcn_resnet18")(torch.randn(3, 32, 32))


def test_backbone_attention_and_parameter_groups():
    model = attnlab.create_model("danet_resnet18", attn="se", num_classes=3)
    assert model.config["attn"] == "se"
    kinds = {type(m).__name__ for m in model.attention_modules()}
    assert {"PositionAttention", "ChannelAttention", "SE"} <= kinds
    groups = model.parameter_groups()
    assert sum(p.numel() for g in groups.values() for p in g) == sum(
        p.numel() for p in model.parameters()
    )
