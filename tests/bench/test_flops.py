"""FLOP/MAC counting: hand-computed counts, conventions, opaque ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlab
from attnlab.bench import count_flops
from attnlab.layers import SE, PositionAttention


def test_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    counts = count_flops(conv, (2, 3, 5, 5))
    # 8 outputs × 3·3·3 taps per output pixel × 25 pixels × 2 images; bias-free.
    assert counts["macs"] == 2 * 8 * 27 * 25
    assert counts["flops"] == 2 * counts["macs"]
    assert counts["by_op"]["aten.convolution"] == {"calls": 1, "macs": 10800, "flops": 21600}


def test_linear_and_bmm_by_hand():
    # Linear 20 → 7 on 4 rows: 4·20·7 MACs (the bias add is not counted: MAC convention).
    assert count_flops(nn.Linear(20, 7), (4, 20))["macs"] == 4 * 20 * 7
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    counts = count_flops(torch.bmm, (a, b))
    assert counts["macs"] == 2 * 3 * 4 * 5 and counts["flops"] == 2 * 120


def test_pooling_and_reductions_by_hand():
    x = torch.randn(2, 3, 4, 5)  # 120 elements
    for reduce in (lambda t: t.mean((2, 3)), lambda t: t.amax((2, 3)), lambda t: t.sum(1)):
        counts = count_flops(reduce, x)
        assert (counts["macs"], counts["flops"]) == (0, 120)
    assert count_flops(lambda t: F.adaptive_avg_pool2d(t, 1), x)["flops"] == 120
    y = torch.randn(1, 1, 4, 4)
    # Windowed pools: output elements × window: 2×2 outputs × 4 (tiles the input: = 16 inputs),
    # and ResNet's 3×3/2 max pool: 2×2 outputs × 9.
    assert count_flops(lambda t: F.avg_pool2d(t, 2), y)["flops"] == 16
    assert count_flops(lambda t: F.max_pool2d(t, 3, 2, 1), y)["flops"] == 36


def test_softmax_norm_and_elementwise_conventions():
    x = torch.randn(2, 3, 4, 5)
    assert count_flops(lambda t: torch.softmax(t, -1), x)["flops"] == 3 * 120
    assert count_flops(lambda t: torch.sigmoid(t) * t + 1, x)["flops"] == 3 * 120
    bn = nn.BatchNorm2d(3)
    assert count_flops(bn, x)["flops"] == 2 * 120  # eval: folded scale and shift
    assert count_flops(lambda t: F.batch_norm(t, None, None, training=True), x)["flops"] == 480


class SELike(nn.Module):
    """x.mean → linear → relu → linear → sigmoid → x * s, written out."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


def se_by_hand(b, c, h, w, hidden):
    macs = b * c * hidden + b * hidden * c  # the two linear layers
    extra = b * c * h * w  # mean: 1 per input element
    extra += b * hidden + b * c  # relu, sigmoid: 1 per output element
    extra += b * c * h * w  # x * s: 1 per output element
    return macs, 2 * macs + extra


def test_se_like_gate_by_hand():
    macs, flops = se_by_hand(2, 16, 4, 4, 4)
    assert (macs, flops) == (256, 1576)
    counts = count_flops(SELike(16, 4), (2, 16, 4, 4))
    assert (counts["macs"], counts["flops"]) == (macs, flops)
    # attnlab's SE has the same equations; its fused fast path (opaque kernels) is not what is
    # counted: the reference path is.
    counts = count_flops(SE(16, rd_channels=4), (2, 16, 4, 4))
    assert (counts["macs"], counts["flops"]) == (macs, flops)
    assert counts["uncounted"] == {}


def test_blocked_position_attention_counts_like_the_plain_form():
    x = (1, 16, 48, 48)  # N² = 5.3 M scores > the 4 M budget: the blocked custom op runs
    blocked = count_flops(PositionAttention(16), x)
    plain = count_flops(PositionAttention(16, block_size=10**12), x)
    assert "attnlab.blocked_position_attention" in blocked["by_op"]
    assert "aten.bmm" in plain["by_op"]
    assert blocked["macs"] == plain["macs"] and blocked["flops"] == plain["flops"]
    n, d = 48 * 48, 2
    assert blocked["by_op"]["attnlab.blocked_position_attention"]["macs"] == n * n * (d + 16)


def test_backward_kernels_are_reported_as_uncounted():
    x = torch.randn(3, 4, requires_grad=True)
    counts = count_flops(lambda t: torch.relu(t).sum().backward(), x)
    assert counts["uncounted"] == {"aten.threshold_backward": 1}


def test_meta_device_counts_equal_real_ones():
    # paper_macs_table counts on shape-only tensors; it must not change a count.
    real = count_flops(attnlab.create_model("resnet20", attn="cbam"), (1, 3, 32, 32))
    with torch.device("meta"):
        meta_model = attnlab.create_model("resnet20", attn="cbam")
    meta = count_flops(meta_model, (1, 3, 32, 32), device="meta")
    assert (meta["macs"], meta["flops"]) == (real["macs"], real["flops"])


def test_mode_restored_and_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    count_flops(model, (1, 3, 8, 8))
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(TypeError, match="count_flops: expected an input shape"):
        count_flops(model, "1x3x8x8")
