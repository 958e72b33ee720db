"""Grad-CAM / Grad-CAM++: localisation on a network built to look at one region, the reference
equations on a ResNet head, targets and layers, and what it must leave alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.viz.gradcam import default_layer, grad_cam

SIZE = 16
# Off-centre, non-square regions: a transposed or flipped map lands outside them.
REGIONS = ((slice(2, 6), slice(9, 14)), (slice(10, 15), slice(1, 5)))


class RegionNet(nn.Module):
    """Class c's logit depends on the pixels of region c only.

    Random conv features (8 channels) are split in two groups; group c is kept inside region c
    only (``select``), and logit c is the mean of group c.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        regions = torch.zeros(8, SIZE, SIZE)
        for c, (rows, cols) in enumerate(REGIONS):
            regions[4 * c : 4 * c + 4, rows, cols] = 1.0
        self.register_buffer("regions", regions)
        self.select = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.select(torch.relu(self.conv(x)) * self.regions)  # B×8×H×W
        return features.reshape(len(x), 2, 4, SIZE, SIZE).mean((2, 3, 4))  # B×2


def peak(maps: torch.Tensor) -> list[tuple[int, int]]:
    flat = maps.flatten(1).argmax(1)
    return [(int(i) // maps.shape[-1], int(i) % maps.shape[-1]) for i in flat]


def inside(point: tuple[int, int], region: tuple[slice, slice]) -> bool:
    rows, cols = region
    return rows.start <= point[0] < rows.stop and cols.start <= point[1] < cols.stop


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_peaks_in_the_region_the_target_logit_depends_on(method):
    torch.manual_seed(0)
    model = RegionNet()
    images = torch.rand(3, 3, SIZE, SIZE)
    for c, region in enumerate(REGIONS):
        result = grad_cam(model, images, layer="select", target=c, method=method)
        assert result.classes.tolist() == [c] * 3
        assert all(inside(p, region) for p in peak(result.maps)), (method, c)
        # Nothing outside the region (up to the bilinear upsampling's 1-pixel blur: none here).
        outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
        outside[region] = False
        assert result.raw[:, 0][:, outside].abs().max() == 0


def test_per_image_targets():
    torch.manual_seed(0)
    result = grad_cam(RegionNet(), torch.rand(2, 3, SIZE, SIZE), layer="select", target=[0, 1])
    first, second = peak(result.maps)
    assert inside(first, REGIONS[0]) and inside(second, REGIONS[1])


def resnet(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = attnlab.create_model("resnet20", num_classes=5, **kwargs).eval()
    with torch.no_grad():  # zero-init last BNs would make every block an identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    return model


def test_reference_equations_on_a_global_pooling_head():
    """Last stage → global mean → fc: ∂y^c/∂A^k_ij = W_ck / (hw) everywhere, so Grad-CAM is
    ReLU(Σ_k W_ck A^k)/(hw) (the CAM of Zhou et al.), and Grad-CAM++ has closed-form weights."""
    model = resnet(attn="se")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(images)  # B×64×8×8
    hw = features.shape[-1] * features.shape[-2]
    target = torch.tensor([0, 3, 4])
    weights = model.fc.weight[target][:, :, None, None].detach()  # B×K×1×1
    cam = grad_cam(model, images, target=target)
    expected = (weights * features).sum(1, keepdim=True).clamp(min=0) / hw
    torch.testing.assert_close(cam.raw, expected, rtol=1e-4, atol=1e-6)
    # Grad-CAM++ with a constant gradient g = W/hw: a = 1 / (2 + ΣA·g), w = hw · a · ReLU(g).
    g = weights / hw
    alpha = 1 / (2 + features.sum((2, 3), keepdim=True) * g)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    expected = (hw * alpha * g.clamp(min=0) * features).sum(1, keepdim=True).clamp(min=0)
    plus = grad_cam(model, images, target=target, method="gradcam++")
    torch.testing.assert_close(plus.raw, expected, rtol=1e-4, atol=1e-6)
    # Input-sized maps scaled to max 1.
    assert plus.maps.shape == (3, 1, 32, 32) and plus.maps.amax((1, 2, 3)).le(1).all()


def test_layers_by_name_or_module_default_and_predicted_class():
    model = resnet(attn="cbam")
    images = torch.randn(2, 3, 32, 32)
    assert default_layer(model) == "layer3"
    by_name = grad_cam(model, images, layer="layer2.1.attn")
    by_module = grad_cam(model, images, layer=model.layer2[1].attn)
    assert by_name.layer == by_module.layer == "layer2.1.attn"
    torch.testing.assert_close(by_name.raw, by_module.raw)
    assert by_name.raw.shape == (2, 1, 16, 16)
    assert by_name.classes.tolist() == model(images).argmax(1).tolist()
    bam = resnet(stage_attn="bam", stage_attn_stages=[1, 2, 3])
    assert default_layer(bam) == "stage_attn.layer3"


def test_outputs_and_parameter_gradients_untouched_and_frozen_weights_work():
    model = resnet(attn="ca")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
    result = grad_cam(model, images)
    torch.testing.assert_close(result.logits, plain)
    assert all(p.grad is None for p in model.parameters())
    assert not model.layer3._forward_hooks  # the hook is removed
    model.requires_grad_(False)
    frozen = grad_cam(model, images, target=result.classes)
    torch.testing.assert_close(frozen.raw, result.raw)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"layer": "layer9"}, "no layer 'layer9'; close names"),
        ({"layer": nn.Conv2d(1, 1, 1)}, "not part of the model"),
        ({"target": [0, 1, 2]}, "3 target classes for 2 images"),
        ({"target": 5}, "not in 0..4"),
        ({"method": "cam"}, "method"),
        ({"layer": "fc"}, "B×C×h×w"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        grad_cam(resnet(), torch.randn(2, 3, 32, 32), **kwargs)
