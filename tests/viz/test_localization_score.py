"""The scene-level localisation score: Grad-CAM and attention maps against object masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.data.synthetic import SyntheticScenes
from attnlab.viz import localization_score


class BrightnessNet(nn.Module):
    """Two logits read from one map, the pixel brightness: Grad-CAM at ``features`` is the
    brightness, whose peak is on the near-white object of an "easy" scene."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.features.weight, 1 / 3)
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_localization_score_finds_the_object_and_is_chance_for_a_constant_map():
    torch.manual_seed(0)
    scenes = SyntheticScenes(split="val", length=12, num_classes=2, difficulty="easy")
    model = BrightnessNet()
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
    score = localization_score(model, scenes, layer="features", target="predicted")
    assert score["count"] == 12 and score["attention"] is None
    assert score["gradcam"]["pointing"] == 1.0 and score["gradcam"]["energy"] > 0.5
    # With a negative class weight the ReLU'd map is all zero: chance level, not a hit.
    with torch.no_grad():
        model.fc.weight.fill_(-1.0)
    score = localization_score(model, scenes, layer="features", target="predicted")
    area = torch.stack([(s.mask > 0).float().mean() for s in map(scenes.scene, range(12))])
    assert score["gradcam"]["pointing"] == pytest.approx(area.mean().item(), abs=1e-5)


def test_localization_score_on_batches_and_attention_maps():
    torch.manual_seed(0)
    model = attnlab.create_model("resnet20", attn="cbam", num_classes=6)
    scenes = SyntheticScenes(split="val", length=10)
    images = torch.stack([scenes.scene(i).image for i in range(10)])
    masks = torch.stack([scenes.scene(i).mask > 0 for i in range(10)])
    batches = [(images[:6], masks[:6]), (images[6:], masks[6:])]
    score = localization_score(model, batches, count=8)
    assert score["count"] == 8
    assert set(score["attention"]["modules"]) == {f"layer{s}.{b}.attn" for s in (1, 2, 3)
                                                  for b in range(3)}  # fmt: skip
    for value in (*score["gradcam"].values(), score["attention"]["pointing"]):
        assert 0.0 <= value <= 1.0
    assert score["attention"]["modules"]["layer1.0.attn"]["kind"] == "spatial"
    with pytest.raises(ValueError, match="target"):
        localization_score(model, batches, target="best")
