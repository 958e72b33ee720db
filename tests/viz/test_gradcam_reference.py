"""Grad-CAM and Grad-CAM++ against pytorch-grad-cam (the ``pytorch_grad_cam`` package).

The target layer has the input's resolution (a CIFAR ResNet's first stage), so the reference's
resize to the input size is the identity; its maps are min-max scaled per image, which is
applied to ours here.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import attnlab
from attnlab.viz.gradcam import grad_cam


@pytest.mark.parametrize(("method", "reference"), [("gradcam", GradCAM),
                                                   ("gradcam++", GradCAMPlusPlus)])  # fmt: skip
def test_matches_pytorch_grad_cam(method, reference):
    torch.manual_seed(0)
    model = attnlab.create_model("resnet20", attn="cbam", num_classes=5, zero_init_last=False)
    with torch.no_grad():
        # Scores 1e4 × larger: the reference adds 1e-7 to each map's maximum when scaling and
        # 1e-6 to Grad-CAM++'s denominators, which is not negligible beside this small
        # network's gradients; Grad-CAM's map is proportional to the scale, so is unchanged.
        model.fc.weight.mul_(1e4)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    targets = [1, 4, 0]
    ours = grad_cam(model, x, layer="layer1", target=targets, method=method).raw[:, 0]
    assert ours.shape == (3, 32, 32)
    low = ours.amin((1, 2), keepdim=True)
    scaled = (ours - low) / (1e-7 + (ours - low).amax((1, 2), keepdim=True))
    with reference(model=model, target_layers=[model.layer1]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    # float32 sums in another order (maps scaled to [0, 1]); Grad-CAM++: the reference's 1e-6
    # in the denominators still moves these maps by up to about 5e-5.
    atol = 1e-5 if method == "gradcam" else 1e-4
    torch.testing.assert_close(scaled, torch.from_numpy(theirs), rtol=1e-4, atol=atol)
    assert (scaled.amax((1, 2)) > 0.99).all()  # non-trivial maps
