"""Pointing game and energy in mask on hand-made maps and masks."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.metrics import energy_in_mask, pointing_game


def quarter_mask(batch: int = 1, size: int = 8) -> torch.Tensor:
    """The object: the top-left quarter (rows and columns 0..size/2-1)."""
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[:, : size // 2, : size // 2] = True
    return masks


def test_pointing_hit_and_miss_per_image_and_mean():
    maps = torch.zeros(3, 1, 8, 8)
    maps[0, 0, 1, 2] = 1.0  # inside
    maps[1, 0, 1, 6] = 1.0  # row inside, column outside: a miss (catches swapped axes)
    maps[2, 0, 6, 1] = 1.0  # column inside, row outside
    maps += 0.1  # a floor under the peak changes nothing
    assert pointing_game(maps, quarter_mask(3)).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(maps, quarter_mask(3), reduction="mean").item() == pytest.approx(1 / 3)


def test_pointing_ties_score_the_fraction_inside_and_constant_maps_score_chance():
    maps = torch.zeros(1, 8, 8)
    maps[0, 0, 0] = maps[0, 7, 7] = 1.0  # two equal peaks, one inside
    assert pointing_game(maps, quarter_mask()).tolist() == [0.5]
    # Constant and all-zero maps: every pixel is a maximum → the mask's area fraction.
    for value in (0.0, 0.5):
        flat = torch.full((1, 1, 8, 8), value)
        assert pointing_game(flat, quarter_mask()).tolist() == [0.25]
        assert energy_in_mask(flat, quarter_mask()).tolist() == [0.25]


def test_energy_in_mask_values():
    maps = torch.zeros(2, 8, 8)
    maps[0, :4, :4] = 1.0  # all mass inside
    maps[1, :4, :4] = 1.0
    maps[1, 4:, 4:] = 3.0  # 16 inside, 48 outside
    assert energy_in_mask(maps, quarter_mask(2)).tolist() == pytest.approx([1.0, 0.25])
    # Negative values are clamped to 0 before scoring (maps are assumed non-negative).
    signed = maps.clone()
    signed[1, 4:, :4] = -5.0
    assert energy_in_mask(signed, quarter_mask(2)).tolist() == pytest.approx([1.0, 0.25])


def test_low_resolution_maps_are_upsampled_bilinearly_to_the_mask():
    small = torch.zeros(1, 1, 2, 2)
    small[0, 0, 1, 0] = 1.0  # bottom-left cell
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 4:, :4] = True  # bottom-left quarter
    assert pointing_game(small, mask).tolist() == [1.0]
    assert pointing_game(small, quarter_mask()).tolist() == [0.0]
    upsampled = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear")
    expected = (upsampled[0, 0] * mask[0]).sum() / upsampled.sum()
    assert energy_in_mask(small, mask).item() == pytest.approx(expected.item())


def test_empty_masks_give_nan_and_means_skip_them():
    masks = quarter_mask(2)
    masks[1] = False
    maps = torch.rand(2, 1, 8, 8)
    for score in (pointing_game, energy_in_mask):
        values = score(maps, masks)
        assert not math.isnan(values[0]) and math.isnan(values[1])
        assert score(maps, masks, reduction="mean").item() == pytest.approx(values[0].item())


@pytest.mark.parametrize(
    ("maps", "masks", "needle"),
    [
        (torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4), "B×1×h×w"),
        (torch.rand(2, 1, 4, 4), torch.ones(3, 4, 4), "2 maps but 3 masks"),
        (torch.rand(4, 4), torch.ones(4, 4), "B×H×W"),
    ],
)
def test_bad_shapes_raise(maps, masks, needle):
    with pytest.raises(ValueError, match=needle):
        pointing_game(maps, masks)
    with pytest.raises(ValueError, match="reduction"):
        energy_in_mask(torch.rand(1, 4, 4), torch.ones(1, 4, 4), reduction="sum")
