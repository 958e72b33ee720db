"""Precise BN: running statistics recomputed from training images (attnlab.engine.precise_bn)."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from attnlab.engine.precise_bn import bn_modules, update_bn_stats, update_bn_stats_from_dataset


def _images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 3


def test_statistics_are_the_equal_weight_average_of_batch_statistics():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.01)).double()
    images = _images()
    batches = [images[:8], images[8:16], images[16:]]
    assert update_bn_stats(model, [(b, None) for b in batches], num_images=24) == 24
    bn = model[0]
    # Reference: the mean over batches of each batch's mean and unbiased variance.
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, variances, rtol=0, atol=1e-12)
    assert bn.momentum == 0.01 and bn.num_batches_tracked.item() == 3


def test_small_momentum_eval_matches_train_after_precise_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01)).double()
    images = _images(64)
    with torch.no_grad():
        model.train()
        for _ in range(5):  # a few moving-average steps: still mostly the initial (0, 1)
            model(images)
        stale = model.eval()(images)
        target = model.train()(images)  # batch statistics of exactly these images
    model.eval()
    assert (stale - target).abs().max() > 0.5
    update_bn_stats(model, [images], num_images=64)
    assert not model.training  # mode restored
    with torch.no_grad():
        fresh = model(images)
    # One batch: running var is the unbiased variance, batch norm uses the biased one.
    n = 64 * 3 * 3
    torch.testing.assert_close(fresh, target * ((n - 1) / n) ** 0.5, rtol=1e-3, atol=1e-3)


def test_image_budget_and_random_stream():
    model = nn.Sequential(nn.BatchNorm2d(3))
    dataset = TensorDataset(_images(40).float(), torch.zeros(40))
    torch.manual_seed(1)
    reference = torch.rand(3)
    torch.manual_seed(1)
    count = update_bn_stats_from_dataset(model, dataset, 20, batch_size=8)
    assert count == 20 and torch.equal(torch.rand(3), reference)  # RNG untouched
    assert update_bn_stats_from_dataset(model, dataset, 1000, batch_size=16) == 40
    assert update_bn_stats_from_dataset(model, dataset, 0) == 0


def test_model_without_bn_is_untouched_and_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert bn_modules(model) == [] and update_bn_stats(model, [_images().float()], 8) == 0
    bn = nn.Sequential(nn.BatchNorm2d(3))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="precise_bn: num_images"):
            update_bn_stats(bn, [_images().float()], bad)
    with pytest.raises(TypeError, match="precise_bn"):
        update_bn_stats(bn, [["not", "a", "tensor"]], 4)
    with pytest.raises(ValueError, match="no images"):
        update_bn_stats(bn, [], 4)
    assert bn[0].momentum == 0.1  # restored after the failure
