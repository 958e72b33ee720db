"""SK, FcaNet, SA, EMA, ELA and GAM against float64 implementations written from the papers'
equations (loops over groups, branches and frequencies; hand-written normalisations), weight
for weight, for every preset.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.layers import (
    ELA,
    EMA,
    GAM,
    MultiSpectralAttention,
    SelectiveKernel,
    ShuffleAttention,
)

DT = torch.float64


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and running statistics, float64, eval mode."""
    generator = torch.Generator().manual_seed(seed)
    module.double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=DT))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=generator, dtype=DT))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=generator, dtype=DT))
    return module


def build64(cls, *args, **kwargs) -> nn.Module:
    """Builds under float64 default dtype, so derived buffers (FcaNet's DCT) are exact too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        return randomise_(cls(*args, **kwargs))
    finally:
        torch.set_default_dtype(previous)


def batch_norm_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.reshape(shape)) * scale.reshape(shape) + bn.bias.reshape(shape)


def group_norm(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """GN written out: mean and biased variance over each group's channels and positions."""
    b, c = x.shape[:2]
    out = torch.empty_like(x)
    size = c // groups
    for g in range(groups):
        part = x[:, g * size : (g + 1) * size]
        dims = tuple(range(1, x.dim()))
        mu = part.mean(dims, keepdim=True)
        var = ((part - mu) ** 2).mean(dims, keepdim=True)
        out[:, g * size : (g + 1) * size] = (part - mu) / torch.sqrt(var + eps)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return out * weight.reshape(shape) + bias.reshape(shape)


def sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-t))


# --- SK: Split, Fuse, Select (Eq. 1-6) ---------------------------------------------------------


def sk_reference(m: SelectiveKernel, x: torch.Tensor) -> torch.Tensor:
    branches = []
    for i, path in enumerate(m.paths):  # U_m = ReLU(BN(conv3×3, dilation m))
        conv, bn = path[0], path[1]
        u = F.conv2d(x, conv.weight, None, m.stride, i + 1, i + 1, m.groups)
        branches.append(torch.clamp(batch_norm_eval(u, bn), min=0))
    s = sum(branches).mean((2, 3))  # B×C
    z = torch.clamp(batch_norm_eval(s @ m.fc_reduce.weight[:, :, 0, 0].T, m.norm), min=0)
    logits = [z @ m.fc_select.weight[k * m.out_channels : (k + 1) * m.out_channels, :, 0, 0].T
              for k in range(m.branches)]  # fmt: skip
    e = [torch.exp(t) for t in logits]
    a = [t / sum(e) for t in e]  # softmax over branches
    return sum(a_k[:, :, None, None] * u_k for a_k, u_k in zip(a, branches, strict=True))


@pytest.mark.parametrize(
    "kwargs", [{}, {"branches": 3}, {"groups": 4, "out_channels": 48, "stride": 2}]
)
def test_sk_matches_equations(kwargs):
    m = build64(SelectiveKernel, 32, **kwargs)
    x = torch.randn(2, 32, 9, 7, dtype=DT)
    torch.testing.assert_close(m(x), sk_reference(m, x))


def test_sk_matches_timm_selective_kernel():
    timm_layers = pytest.importorskip("timm.layers")
    ours = build64(SelectiveKernel, 64)
    theirs = timm_layers.SelectiveKernel(64, 64, groups=32, split_input=False, rd_divisor=32)
    mapping = {"fc_reduce": "attn.fc_reduce", "norm": "attn.bn", "fc_select": "attn.fc_select"}
    state = {}
    for key, value in ours.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "paths":
            index, layer, leaf = rest.split(".", 2)
            key = f"paths.{index}.{'conv' if layer == '0' else 'bn'}.{leaf}"
        else:
            key = f"{mapping[head]}.{rest}"
        state[key] = value
    theirs.double().eval().load_state_dict(state)
    x = torch.randn(2, 64, 7, 6, dtype=DT)
    torch.testing.assert_close(ours(x), theirs(x))


# --- FcaNet: multi-spectral pooling (Eq. 6-10) --------------------------------------------------


def dct_value(freq: float, pos: int, size: int) -> float:
    value = math.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return value if freq == 0 else value * math.sqrt(2)


def adaptive_average(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Adaptive average pooling written out: bin i spans [⌊iH/h⌋, ⌈(i+1)H/h⌉)."""
    h, w = x.shape[2:]
    out = torch.empty(*x.shape[:2], out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
    return out


def fca_reference(m: MultiSpectralAttention, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    if m.size_mode == "pool":
        gh, gw = m.dct_size
        x_pooled = adaptive_average(x, gh, gw) if (h, w) != (gh, gw) else x
        freqs = [(u * (gh // 7), v * (gw // 7)) for u, v in m.freqs]
    else:
        gh, gw, x_pooled = h, w, x
        freqs = [(u * h / 7, v * w / 7) for u, v in m.freqs]
    part = m.channels // len(freqs)
    spectrum = torch.zeros(x.shape[0], m.channels, dtype=DT)
    for i, (u, v) in enumerate(freqs):
        basis = torch.tensor(
            [[dct_value(u, p, gh) * dct_value(v, q, gw) for q in range(gw)] for p in range(gh)],
            dtype=DT,
        )
        chans = slice(i * part, (i + 1) * part)
        spectrum[:, chans] = (x_pooled[:, chans] * basis).sum((2, 3))
    hidden = torch.clamp(spectrum @ m.fc1.weight.T, min=0)
    return x * sigmoid(hidden @ m.fc2.weight.T)[:, :, None, None]


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({}, (7, 7)),
        ({}, (13, 5)),
        ({}, (1, 1)),
        ({"dct_size": 14}, (14, 14)),
        ({"dct_size": 14}, (9, 20)),
        ({"freq_sel": "low8"}, (10, 10)),
        ({"freq_sel": "bot4", "dct_size": (7, 14)}, (6, 11)),
        ({"preset": "native"}, (13, 5)),
        ({"preset": "native"}, (1, 3)),
        ({"preset": "native", "freq_sel": "top32"}, (8, 9)),
    ],
)
def test_fca_matches_equations(kwargs, size):
    channels = 64
    m = build64(MultiSpectralAttention, channels, **kwargs)
    x = torch.randn(2, channels, *size, dtype=DT)
    torch.testing.assert_close(m(x), fca_reference(m, x))


def test_fca_native_is_the_authors_scaling_at_multiples_of_seven():
    official = build64(MultiSpectralAttention, 32, dct_size=(14, 21))
    native = MultiSpectralAttention(32, preset="native").double().eval()
    native.load_state_dict(official.state_dict())
    x = torch.randn(2, 32, 14, 21, dtype=DT)
    torch.testing.assert_close(native(x), official(x))


def test_fca_zero_frequency_alone_is_se_pooling():
    m = build64(MultiSpectralAttention, 32, freq_sel="top1")
    x = torch.randn(2, 32, 7, 7, dtype=DT)
    torch.testing.assert_close(m.spectrum(x), 7 * x.mean((2, 3)))  # (1/√7)² · Σ = 7 · mean


# --- SA: shuffle units (Eq. 1-4) ---------------------------------------------------------------


def sa_reference(m: ShuffleAttention, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    g, half = m.groups, c // (2 * m.groups)
    concat = torch.empty_like(x)
    for k in range(g):
        base = k * 2 * half
        for j in range(half):
            xc = x[:, base + j]  # channel half, B×H×W
            s = m.cweight[0, j, 0, 0] * xc.mean((1, 2)) + m.cbias[0, j, 0, 0]
            concat[:, base + j] = xc * sigmoid(s)[:, None, None]
            xs = x[:, base + half + j]  # spatial half
            mu = xs.mean((1, 2), keepdim=True)
            var = ((xs - mu) ** 2).mean((1, 2), keepdim=True)
            gn = (xs - mu) / torch.sqrt(var + m.gn.eps) * m.gn.weight[j] + m.gn.bias[j]
            concat[:, base + half + j] = xs * sigmoid(m.sweight[0, j, 0, 0] * gn + m.sbias[0, j])
    out = torch.empty_like(x)
    for i in range(c // 2):  # channel shuffle, 2 groups: out[2i + t] = concat[t·C/2 + i]
        for t in range(2):
            out[:, 2 * i + t] = concat[:, t * (c // 2) + i]
    return out


@pytest.mark.parametrize(("channels", "kwargs"), [(256, {}), (32, {}), (48, {"groups": 3})])
def test_sa_matches_equations(channels, kwargs):
    m = build64(ShuffleAttention, channels, **kwargs)
    x = torch.randn(2, channels, 5, 6, dtype=DT)
    torch.testing.assert_close(m(x), sa_reference(m, x))


def test_sa_initial_gates_are_sigmoid_one():
    m = ShuffleAttention(128).double()
    x = torch.randn(1, 128, 4, 4, dtype=DT)
    # W = 0, b = 1 at init: every element is scaled by σ(1); then the two halves interleave.
    order = [t * 64 + i for i in range(64) for t in range(2)]
    torch.testing.assert_close(m(x), x[:, order] * sigmoid(torch.tensor(1.0, dtype=DT)))


# --- EMA: grouped 1×1 / 3×3 branches with cross-spatial learning --------------------------------


def ema_reference(m: EMA, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    g = m.groups
    cg = c // g
    out = torch.empty_like(x)
    w1, b1 = m.conv1x1.weight[:, :, 0, 0], m.conv1x1.bias
    for k in range(g):
        xg = x[:, k * cg : (k + 1) * cg]  # B×C'×H×W
        z_h, z_w = xg.mean(3), xg.mean(2)  # B×C'×H, B×C'×W
        a_h = torch.einsum("oc,bch->boh", w1, z_h) + b1[:, None]
        a_w = torch.einsum("oc,bcw->bow", w1, z_w) + b1[:, None]
        gated = xg * sigmoid(a_h)[..., None] * sigmoid(a_w)[:, :, None, :]
        x1 = group_norm(gated, cg, m.gn.weight, m.gn.bias, m.gn.eps)
        x2 = F.conv2d(xg, m.conv3x3.weight, m.conv3x3.bias, padding=1)
        p1, p2 = x1.mean((2, 3)), x2.mean((2, 3))  # B×C'
        s1 = torch.exp(p1) / torch.exp(p1).sum(1, keepdim=True)
        s2 = torch.exp(p2) / torch.exp(p2).sum(1, keepdim=True)
        weights = torch.einsum("bc,bchw->bhw", s1, x2) + torch.einsum("bc,bchw->bhw", s2, x1)
        out[:, k * cg : (k + 1) * cg] = xg * sigmoid(weights)[:, None]
    return out


@pytest.mark.parametrize(("channels", "kwargs"), [(64, {}), (32, {"groups": 8}), (16, {})])
def test_ema_matches_equations(channels, kwargs):
    m = build64(EMA, channels, **kwargs)
    x = torch.randn(2, channels, 6, 5, dtype=DT)
    torch.testing.assert_close(m(x), ema_reference(m, x))


# --- ELA: strip pooling, shared 1-D conv, GN, two gates (Eq. 4-7) -------------------------------


def ela_reference(m: ELA, x: torch.Tensor) -> torch.Tensor:
    conv, norm = m.conv, m.norm
    k, groups = conv.kernel_size[0], conv.groups

    def strip_gate(z: torch.Tensor) -> torch.Tensor:  # z: B×C×L
        b, c, length = z.shape
        per = c // groups
        padded = F.pad(z, (k // 2, k // 2))
        y = torch.zeros_like(z)
        for o in range(c):
            grp = o // per
            for i in range(per):
                for t in range(k):
                    y[:, o] += conv.weight[o, i, t] * padded[:, grp * per + i, t : t + length]
        return sigmoid(group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps))

    return x * strip_gate(x.mean(3))[..., None] * strip_gate(x.mean(2))[:, :, None, :]


@pytest.mark.parametrize("preset", ["tiny", "base", "small", "large"])
def test_ela_matches_equations(preset):
    m = build64(ELA, 32, preset=preset)
    x = torch.randn(2, 32, 7, 9, dtype=DT)
    torch.testing.assert_close(m(x), ela_reference(m, x))


def test_ela_presets_are_the_papers_variants():
    shapes = {p: (ELA(64, preset=p).conv.weight.shape, ELA(64, preset=p).norm.num_groups)
              for p in ("tiny", "base", "small", "large")}  # fmt: skip
    assert shapes == {
        "tiny": ((64, 1, 5), 32),
        "base": ((64, 1, 7), 16),
        "small": ((64, 8, 5), 16),
        "large": ((64, 8, 7), 16),
    }


# --- GAM: permuted channel MLP, conv spatial gate (Eq. 1-2) -------------------------------------


def gam_reference(m: GAM, x: torch.Tensor) -> torch.Tensor:
    perm = x.permute(0, 2, 3, 1)  # B×H×W×C: the MLP acts on the channel axis at each position
    hidden = torch.clamp(perm @ m.fc1.weight[:, :, 0, 0].T + m.fc1.bias, min=0)
    m_c = (hidden @ m.fc2.weight[:, :, 0, 0].T + m.fc2.bias).permute(0, 3, 1, 2)
    if m.preset == "paper":
        m_c = sigmoid(m_c)
    f2 = x * m_c
    pad = m.conv1.kernel_size[0] // 2
    t = F.conv2d(f2, m.conv1.weight, m.conv1.bias, padding=pad, groups=m.groups)
    t = torch.clamp(batch_norm_eval(t, m.norm1), min=0)
    t = F.conv2d(t, m.conv2.weight, m.conv2.bias, padding=pad, groups=m.groups)
    m_s = sigmoid(batch_norm_eval(t, m.norm2))
    if m.groups > 1:  # channel shuffle: out[i·g + t] = in[t·C/g + i]
        c, g = m_s.shape[1], m.groups
        m_s = torch.stack([m_s[:, t * (c // g) + i] for i in range(c // g) for t in range(g)], 1)
    return f2 * m_s


@pytest.mark.parametrize("kwargs", [{}, {"preset": "popular"}, {"groups": 4}])
def test_gam_matches_equations(kwargs):
    m = build64(GAM, 32, **kwargs)
    with torch.no_grad():  # small weights keep the popular preset's ungated product tame
        for p in m.parameters():
            p.mul_(0.2)
    x = torch.randn(2, 32, 6, 7, dtype=DT)
    torch.testing.assert_close(m(x), gam_reference(m, x))


# --- Observable maps: documented shapes, outputs unchanged ---------------------------------------

MAP_SHAPES = [
    (SelectiveKernel, {}, {"selection_map": (2, 2, 32, 1)}),
    (MultiSpectralAttention, {}, {"channel_map": (2, 32, 1, 1)}),
    (ShuffleAttention, {}, {"channel_map": (2, 16, 1, 1), "spatial_map": (2, 16, 5, 6)}),
    (EMA, {"groups": 8}, {"height_map": (2, 32, 5, 1), "width_map": (2, 32, 1, 6),
                          "spatial_map": (2, 8, 5, 6)}),
    (ELA, {}, {"height_map": (2, 32, 5, 1), "width_map": (2, 32, 1, 6)}),
    (GAM, {}, {"channel_map": (2, 32, 5, 6), "spatial_map": (2, 32, 5, 6)}),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "kwargs", "shapes"), MAP_SHAPES)
def test_maps_are_observable_without_changing_outputs(cls, kwargs, shapes):
    from attnlab.layers import capture_maps

    m = build64(cls, 32, **kwargs)
    x = torch.randn(2, 32, 5, 6, dtype=DT)
    plain = m(x)
    with capture_maps(m) as maps:
        observed = m(x)
    torch.testing.assert_close(observed, plain, rtol=0, atol=0)
    assert {k: tuple(v.shape) for k, v in maps.items()} == shapes
