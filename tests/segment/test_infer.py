"""Segmentation inference: single scale, multi-scale + flip, sliding windows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.segment import predict_labels, predict_probs, sliding_window_probs, whole_image_probs
from attnlab.segment.infer import _starts


class SignModel(nn.Module):
    """Class 1 where the first channel is positive, class 0 elsewhere (logits ±4x)."""

    def forward(self, x):
        return torch.cat([-4 * x[:, :1], 4 * x[:, :1]], 1)


class PositionModel(nn.Module):
    """Ignores the image: class-1 logit grows from −2 at the left edge to +2 at the right."""

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:])
        return torch.cat([torch.zeros_like(ramp), ramp], 1)


def _halves(height=30, width=41):
    image = -torch.ones(1, 3, height, width)
    image[..., : width // 2] = 1.0  # left part positive → class 1
    expected = torch.zeros(1, height, width, dtype=torch.long)
    expected[..., : width // 2] = 1
    return image, expected


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"crop_size": 16},
        {"crop_size": (12, 20), "stride": 5},
        {"scales": (0.5, 0.75, 1.0, 1.5), "flip": True},
        {"scales": (0.75, 1.25), "flip": True, "crop_size": 16},
    ],
)
def test_each_mode_returns_the_expected_map(options):
    image, expected = _halves()
    labels = predict_labels(SignModel(), image, **options)
    assert labels.shape == expected.shape
    edge = image.shape[-1] // 2
    keep = torch.ones_like(expected, dtype=torch.bool)
    keep[..., edge - 1 : edge + 1] = False  # resizing blurs the two columns at the edge
    assert torch.equal(labels[keep], expected[keep])
    if "scales" not in options:  # no resizing: exact everywhere
        assert torch.equal(labels, expected)


def test_flip_averages_the_mirrored_prediction():
    image = torch.randn(2, 3, 9, 13)
    single = predict_probs(PositionModel(), image)
    ramp = torch.linspace(-2, 2, 13)
    torch.testing.assert_close(single[:, 1], torch.sigmoid(ramp).expand(2, 9, 13))
    # σ(t) and its mirror σ(−t) average to ½ everywhere
    flipped = predict_probs(PositionModel(), image, flip=True)
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))


def test_multi_scale_averages_probabilities_of_every_scale():
    model = nn.Conv2d(3, 4, 1)
    image = torch.randn(1, 3, 1, 1).expand(1, 3, 20, 24).contiguous()  # constant image
    single = whole_image_probs(model, image)
    multi = predict_probs(model, image, scales=(0.5, 1.0, 1.5, 2.0), flip=True)
    torch.testing.assert_close(multi, single)
    assert torch.allclose(multi.sum(1), torch.ones(1, 20, 24))


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (9, 40), (5, 7)])
def test_sliding_window_equals_whole_image_for_equivariant_model(size):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)  # translation-equivariant, receptive field 1
    image = torch.randn(2, 3, *size)
    whole = whole_image_probs(model, image)
    windows = sliding_window_probs(model, image, 16)
    assert windows.shape == (2, 5, *size)
    torch.testing.assert_close(windows, whole)


def test_window_positions_cover_the_image():
    assert _starts(37, 16, 11) == [0, 11, 21]
    assert _starts(16, 16, 11) == [0]
    assert _starts(10, 16, 11) == [0]  # padded to the crop
    assert _starts(33, 16, 11) == [0, 11, 17]


def test_odd_sizes_and_model_state_kept():
    torch.manual_seed(0)
    model = attnlab.create_model("danet_resnet20", num_classes=3).train()
    stats = model.head.pam_reduce[1].running_mean.clone()
    image = torch.randn(1, 3, 23, 31)
    probs = predict_probs(model, image, scales=(0.75, 1.0, 1.25), flip=True, crop_size=16)
    assert probs.shape == (1, 3, 23, 31)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 23, 31))
    assert model.training and torch.equal(model.head.pam_reduce[1].running_mean, stats)
    assert predict_labels(model, image).shape == (1, 23, 31)


def test_errors():
    model = nn.Conv2d(3, 2, 1)
    with pytest.raises(ValueError, match="B×C×H×W"):
        predict_probs(model, torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="scales"):
        predict_probs(model, torch.randn(1, 3, 8, 8), scales=(0.0,))
    with pytest.raises(ValueError, match="crop_size"):
        sliding_window_probs(model, torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="height and width"):
        whole_image_probs(nn.Conv2d(3, 2, 3, stride=2), torch.randn(1, 3, 8, 8))
