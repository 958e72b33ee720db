"""Metrics: localisation of saliency and attention maps (pointing game, energy in mask).

Example:
    >>> import torch
    >>> from attnlab.metrics import pointing_game
    >>> mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    >>> mask[0, 4:, 4:] = True
    >>> heat = torch.zeros(1, 1, 2, 2)
    >>> heat[0, 0, 1, 1] = 1.0  # the bottom-right cell, upsampled to 8×8
    >>> pointing_game(heat, mask).tolist()
    [1.0]
"""

from .localization import energy_in_mask, localization_score, pointing_game

__all__ = ["energy_in_mask", "localization_score", "pointing_game"]
