"""Our ResNets against torchvision's: the same state-dict names and shapes, and torchvision's
weights (random here: nothing is downloaded) give bit-identical outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

import attnlab


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_load_and_give_identical_outputs(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None, num_classes=7).eval()
    with torch.no_grad():  # statistics away from their initial 0 and 1, so BN matters
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    ours = attnlab.create_model(name, num_classes=7).eval()
    state = theirs.state_dict()
    assert list(ours.state_dict()) == list(state)
    assert all(ours.state_dict()[k].shape == v.shape for k, v in state.items())
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        # Bit-identical: the same operations in the same order (the head's mean over H, W is
        # adaptive average pooling to 1×1).
        assert torch.equal(ours(x), theirs(x))
