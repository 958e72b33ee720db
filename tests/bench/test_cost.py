"""Parameter, MAC and latency measurement."""

from __future__ import annotations

import torch
from torch import nn

import attnlab
from attnlab.bench import count_macs, count_params, measure_latency


def test_macs_of_known_networks():
    # torchvision's published figure for ResNet-50 at 224×224: 4.09 GMACs ("GFLOPS").
    assert round(count_macs(attnlab.create_model("resnet50"), (1, 3, 224, 224)) / 1e9, 2) == 4.09
    # CIFAR ResNet-20: 40.55 M MACs (He et al. count ~41 M).
    assert count_macs(attnlab.create_model("resnet20"), (1, 3, 32, 32)) == 40_551_040


def test_macs_count_by_hand():
    layer = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 25, 4)
    )
    # conv: 8·3·3·3 MACs per output pixel × 25 pixels; linear: 200·4.
    assert count_macs(layer, (1, 3, 5, 5)) == 8 * 27 * 25 + 200 * 4
    assert count_macs(layer, (2, 3, 5, 5)) == 2 * (8 * 27 * 25 + 200 * 4)


def test_attention_adds_macs_and_params_as_expected():
    base = attnlab.create_model("resnet20")
    se = attnlab.create_model("resnet20", attn="se")
    pam = attnlab.create_model("resnet20", attn="pam")
    assert count_params(se) - count_params(base) == sum(
        count_params(b.attn) for layer in (se.layer1, se.layer2, se.layer3) for b in layer
    )
    assert 0 < count_macs(se, (1, 3, 32, 32)) - count_macs(base, (1, 3, 32, 32)) < 10_000
    # PAM's QᵀK and attention·V matmuls are counted: far more than its convs alone.
    assert count_macs(pam, (1, 3, 32, 32)) > 2 * count_macs(base, (1, 3, 32, 32))


def test_latency_is_positive_and_restores_mode():
    model = attnlab.create_model("resnet20").train()
    seconds = measure_latency(model, (1, 3, 32, 32), warmup=1, repeats=3, number=1)
    assert 0 < seconds < 5 and model.training
    assert count_macs(model, (1, 3, 32, 32)) > 0 and model.training
    assert torch.is_grad_enabled()  # no_grad inside the helpers does not leak
