"""Timing: rounds, interleaving, same-run ratios, training steps."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from attnlab.bench import compare_latency, measure_latency, measure_train_step


def test_compare_latency_interleaves_rounds():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    result = compare_latency(fns, warmup=1, repeats=3, number=2)
    round_ = ["A", "A", "B", "B", "C", "C"]
    assert calls == ["A", "B", "C"] + 3 * round_
    assert result["baseline"] == "A" and result["ratios"]["A"] == 1.0
    assert set(result["seconds"]) == set("ABC") and all(
        len(r) == 3 for r in result["rounds"].values()
    )


def test_compare_latency_ratios_to_the_baseline():
    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    result = compare_latency(
        {"base": sleeper(0.005), "triple": sleeper(0.015)}, warmup=1, repeats=3, number=2
    )
    assert 1.8 < result["ratios"]["triple"] < 4.0  # sleep overshoots by a little, not 2×
    assert result["seconds"]["triple"] > result["seconds"]["base"] >= 0.005


def test_automatic_number_of_calls():
    result = compare_latency(
        {"fast": lambda: None, "slow": lambda: time.sleep(0.01)},
        warmup=1,
        repeats=1,
        round_seconds=0.02,
    )
    assert result["number"]["slow"] in (1, 2, 3) and result["number"]["fast"] == 200


def test_bad_arguments():
    with pytest.raises(ValueError, match="no candidates"):
        compare_latency({})
    with pytest.raises(ValueError, match="repeats >= 1"):
        compare_latency({"a": lambda: None}, repeats=0)


def test_train_step_restores_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    model(torch.randn(2, 3, 8, 8))
    model.eval()
    mean = model[1].running_mean.clone()
    seconds = measure_train_step(model, (2, 3, 8, 8), warmup=1, repeats=2, number=1)
    assert 0 < seconds < 5
    assert not model.training and torch.equal(model[1].running_mean, mean)
    assert all(p.grad is None for p in model.parameters())
    latency = measure_latency(model, (2, 3, 8, 8), warmup=1, repeats=2, number=2)
    assert 0 < latency < 5 and not model.training
