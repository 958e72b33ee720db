"""insert_attention on real torchvision and timm models of every common CNN family: identity
at insertion, exactly which keys are new, pretrained keys still load, the sites reported, the
attention on the residual branch before the addition, and gradients reaching it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.surgery import AttentionBlend

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

tv = torchvision.models


def _timm(name: str):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10)


# (builder, where, number of insertions, (path, site, channels, hook) of one of them): the counts
# and widths are the architectures' (blocks per stage, stage widths), not the code's output.
FAST = {
    "tv_resnet18": (lambda: tv.resnet18(num_classes=10), "block", 8,
                    ("layer1.0", "layer1.0.bn2", 64, "output")),
    "tv_regnet_x_400mf": (lambda: tv.regnet_x_400mf(num_classes=10), "block", 1 + 2 + 7 + 12,
                          ("trunk_output.block2.block2-1", "trunk_output.block2.block2-1.f", 64,
                           "output")),
    "tv_mobilenet_v2": (lambda: tv.mobilenet_v2(num_classes=10), "block", 17,
                        ("features.3", "features.3.conv", 24, "output")),
    "tv_mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), "block", 11,
                              ("features.1", "features.1", 16, "output")),
    "tv_efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), "block", 16,
                           ("features.2.1", "features.2.1.stochastic_depth", 24, "input")),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), "block", 15,
                             ("blocks.1.1", "blocks.1.1.drop_path", 24, "input")),
    "timm_regnety_002": (_timm("regnety_002"), "block", 1 + 1 + 4 + 7,
                         ("s1.b1", "s1.b1.drop_path", 24, "input")),
    "timm_convnext_atto": (_timm("convnext_atto"), "block", 2 + 2 + 6 + 2,
                           ("stages.0.blocks.0", "stages.0.blocks.0.drop_path", 40, "input")),
    "timm_mobilenetv3_small": (_timm("mobilenetv3_small_100"), "stage", 3,
                               ("blocks.1", "blocks.1", 24, "output")),
}  # fmt: skip
SLOW = {
    "tv_resnext50": (lambda: tv.resnext50_32x4d(num_classes=10), "block", 16,
                     ("layer1.0", "layer1.0.bn3", 256, "output")),
    "tv_wide_resnet50": (lambda: tv.wide_resnet50_2(num_classes=10), "block", 16,
                         ("layer4.2", "layer4.2.bn3", 2048, "output")),
    "tv_convnext_tiny": (lambda: tv.convnext_tiny(num_classes=10), "block", 18,
                         ("features.1.0", "features.1.0.stochastic_depth", 96, "input")),
    "tv_densenet121": (lambda: tv.densenet121(num_classes=10), "stage", 3,
                       ("features.denseblock2", "features.denseblock2", 512, "output")),
    "tv_vgg11": (lambda: tv.vgg11(num_classes=10), "stage", 4,
                 ("features.9", "features.9", 256, "output")),
}  # fmt: skip
CASES = [pytest.param(k, *v, id=k) for k, v in FAST.items()] + [
    pytest.param(k, *v, id=k, marks=pytest.mark.slow) for k, v in SLOW.items()
]


def pretend_pretrained(model: nn.Module) -> nn.Module:
    """Non-trivial norm scales, layer scales and statistics, as after training (freshly built
    models zero some last-norm scales, which would zero the branch and its gradients)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or (p.ndim == 3 and p.shape[1:] == (1, 1)):
                p.uniform_(0.5, 1.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(("family", "build", "where", "count", "one"), CASES)
def test_family_insertion(family, build, where, count, one):
    torch.manual_seed(0)
    model = pretend_pretrained(build())
    original = model.state_dict()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    report = attnlab.insert_attention(model, "cbam", where=where)

    # The sites, with their channels.
    assert len(report) == count
    assert one in [(i.path, i.site, i.channels, i.hook) for i in report]
    assert str(report).count("CBAM") == count
    # Identity at insertion.
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    # Exactly the keys of one blended CBAM per insertion are new; the original ones remain.
    keys = set(model.state_dict())
    assert set(original) <= keys
    expected_new = set()
    for i in report:
        module = AttentionBlend(attnlab.create_attention("cbam", i.channels))
        name = "attn" if where == "block" else "output_attn"
        assert i.module.startswith(i.path + "." + name) or (  # a DenseNet block's: its ancestor's
            i.module == "output_attn_" + i.path.replace(".", "_")
        )
        assert isinstance(model.get_submodule(i.module), AttentionBlend)
        expected_new |= {f"{i.module}.{k}" for k in module.state_dict()}
    assert keys - set(original) == expected_new
    # A fresh copy with attention takes the original weights and computes the same function.
    torch.manual_seed(1)
    fresh = pretend_pretrained(build())
    attnlab.insert_attention(fresh, "cbam", where=where)
    loaded = attnlab.load_weights(fresh, original)
    assert loaded.missing == [] and loaded.unexpected == []
    assert set(loaded.new_attention) == expected_new
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), before, rtol=1e-5, atol=1e-6)
    # A training step reaches every gate α, then the attention's own parameters.
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.randn(2, 3, 64, 64)
    for step in range(2):
        optimiser.zero_grad()
        model(batch).square().mean().backward()
        for i in report:
            blend = model.get_submodule(i.module)
            if step == 0:
                assert blend.alpha.grad.abs().item() > 0, i.path
            else:
                grads = [p.grad for p in blend.attention.parameters() if p.grad is not None]
                assert any(g.abs().max() > 0 for g in grads), i.path
        optimiser.step()


class ZeroBranch(nn.Module):
    """Stands in for the attention: the branch becomes zero, so a block whose attention sits on
    its residual branch before the addition returns its shortcut (through the block's final
    activation, if any)."""

    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize(
    ("build", "path", "after_add"),
    [
        (lambda: tv.resnet18(), "layer1.0", torch.relu),
        (lambda: tv.regnet_x_400mf(), "trunk_output.block2.block2-1", torch.relu),
        (lambda: tv.mobilenet_v2(), "features.3", lambda x: x),
        (lambda: tv.efficientnet_b0(), "features.2.1", lambda x: x),
        (_timm("efficientnet_b0"), "blocks.1.1", lambda x: x),
        (_timm("regnety_002"), "s3.b2", torch.relu),
        (_timm("convnext_atto"), "stages.1.blocks.1", lambda x: x),
    ],
    ids=["tv_resnet", "tv_regnet", "tv_mobilenet_v2", "tv_efficientnet", "timm_efficientnet",
         "timm_regnet", "timm_convnext"],
)  # fmt: skip
def test_attention_is_on_the_residual_branch_before_the_add(build, path, after_add):
    model = build().eval()
    attnlab.insert_attention(model, "se", where="block")
    block = model.get_submodule(path)
    block.attn.attention = ZeroBranch()
    with torch.no_grad():
        block.attn.alpha.fill_(1.0)
        x = torch.randn(1, _in_channels(block), 8, 8)
        torch.testing.assert_close(block(x), after_add(x))


def _in_channels(block: nn.Module) -> int:
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels


def test_a_glob_over_convnext_blocks_puts_attention_on_their_branches():
    model = pretend_pretrained(timm.create_model("convnext_atto", pretrained=False))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    report = attnlab.insert_attention(model, "eca", where=["stages.*.blocks.*"])
    assert len(report) == 2 + 2 + 6 + 2  # the blocks, not the 200-odd modules inside them
    assert all(i.site == i.path + ".drop_path" and i.hook == "input" for i in report)
    assert [i.channels for i in report] == [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
