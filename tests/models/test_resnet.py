"""ResNet family: published parameter counts, torchvision key names, config, attention."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.layers import CBAM, ECA, SE

RESNET50 = 25_557_032
ECA_AUTHORS_K = [{"k_size": k} for k in (3, 5, 5, 7)]


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", RESNET50),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ],
)
def test_imagenet_counts_match_torchvision(name, expected):
    assert count(attnlab.create_model(name)) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"attn": "se"}, 28_088_024),
        ({"attn": "cbam"}, 28_089_624),
        ({"stage_attn": "bam"}, 25_915_099),
        ({"attn": "eca", "attn_stage_kwargs": ECA_AUTHORS_K}, 25_557_112),
    ],
)
def test_resnet50_with_attention_matches_the_papers(kwargs, expected):
    assert count(attnlab.create_model("resnet50", **kwargs)) == expected


def test_resnet101_follows_the_same_rules():
    base = count(attnlab.create_model("resnet101"))
    widths = [256] * 3 + [512] * 4 + [1024] * 23 + [2048] * 3
    se = count(attnlab.create_model("resnet101", attn="se"))
    cbam = count(attnlab.create_model("resnet101", attn="cbam"))
    bam = count(attnlab.create_model("resnet101", stage_attn="bam"))
    assert se - base == sum(count(SE(c)) for c in widths)
    assert cbam - base == sum(count(CBAM(c)) for c in widths)
    assert (se, cbam, bam) == (49_326_872, 49_330_172, 44_907_227)
    # The papers' rounded figures: SE 49.33M, CBAM 49.33M, BAM 44.91M.
    assert [round(n / 1e6, 2) for n in (se, cbam, bam)] == [49.33, 49.33, 44.91]


@pytest.mark.parametrize(
    ("name", "expected", "blocks"),
    [
        ("resnet20", 269_722, 3),
        ("resnet32", 464_154, 5),
        ("resnet44", 658_586, 7),
        ("resnet56", 853_018, 9),
        ("resnet110", 1_727_962, 18),
    ],
)
def test_cifar_family_counts(name, expected, blocks):
    model = attnlab.create_model(name)  # option-A shortcuts, 10 classes
    assert count(model) == expected
    widths = [16] * blocks + [32] * blocks + [64] * blocks
    assert count(attnlab.create_model(name, attn="se")) - expected == sum(
        count(SE(c)) for c in widths
    )
    eca_k3 = attnlab.create_model(name, attn="eca", attn_kwargs={"k_size": 3})
    assert count(eca_k3) - expected == 3 * len(widths)
    # Option B adds a 1×1 conv + BN at the two stage transitions.
    assert (
        count(attnlab.create_model(name, shortcut="B")) == expected + 16 * 32 + 64 + 32 * 64 + 128
    )


def torchvision_resnet18_keys() -> list[str]:
    """The state-dict keys of torchvision's resnet18, written out from its layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            prefix = f"layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight"] + [f"{prefix}.bn1.{p}" for p in bn]
            keys += [f"{prefix}.conv2.weight"] + [f"{prefix}.bn2.{p}" for p in bn]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight"]
                keys += [f"{prefix}.downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_state_dict_names_follow_torchvision():
    assert list(attnlab.create_model("resnet18").state_dict()) == torchvision_resnet18_keys()
    keys = attnlab.create_model("resnet50").state_dict()
    for key, shape in {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.bn3.running_var": (2048,),
        "fc.weight": (1000, 2048),
    }.items():
        assert tuple(keys[key].shape) == shape, key
    # v1.5: the stride sits on the 3×3 conv of the first bottleneck of a stage.
    model = attnlab.create_model("resnet50")
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_attention_keys_extend_the_torchvision_layout():
    plain = set(attnlab.create_model("resnet18").state_dict())
    keys = set(attnlab.create_model("resnet18", attn="se", stage_attn="bam").state_dict())
    assert plain <= keys
    extra = keys - plain
    assert all(k.split(".")[2] == "attn" or k.startswith("stage_attn.layer") for k in extra)
    assert "layer1.0.attn.fc1.weight" in extra and "stage_attn.layer3.gate" not in extra


CASES = [(name, attn) for name in attnlab.list_models(family="resnet") for attn in (None, "se")]
CASES += [("resnet18", a) for a in ("cbam", "eca", "ca", "bam", "pam", "cam")]
CASES += [("resnet20", a) for a in ("cbam", "eca", "ca", "bam", "pam", "cam")]
CASES += [("resnet50", a) for a in ("cbam", "eca", "ca")]


@pytest.mark.parametrize(("name", "attn"), CASES)
def test_forward_backward(name, attn):
    torch.manual_seed(0)
    model = attnlab.create_model(name, attn=attn, num_classes=7)
    size = 32 if model.config["stem"] == "cifar" else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]


def test_stage_attention_placement():
    model = attnlab.create_model("resnet50", stage_attn="bam")
    assert list(model.stage_attn) == ["layer1", "layer2", "layer3"]
    assert [m.channels for m in model.stage_attn.values()] == [256, 512, 1024]
    custom = attnlab.create_model("resnet20", stage_attn="cbam", stage_attn_stages=[3])
    assert list(custom.stage_attn) == ["layer3"]
    with pytest.raises(ValueError, match="stage_attn_stages has 4"):
        attnlab.create_model("resnet20", stage_attn="bam", stage_attn_stages=[4])


def test_per_stage_attention_options():
    model = attnlab.create_model("resnet50", attn="eca", attn_stage_kwargs=ECA_AUTHORS_K)
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    for layer, k in zip(stages, (3, 5, 5, 7), strict=True):
        assert {block.attn.k_size for block in layer} == {k}
    adaptive = attnlab.create_model("resnet50", attn="eca")
    assert [adaptive.layer1[0].attn.k_size, adaptive.layer4[0].attn.k_size] == [5, 7]
    assert all(isinstance(b.attn, ECA) for b in adaptive.layer3)
    with pytest.raises(ValueError, match="one dict per stage"):
        attnlab.create_model("resnet50", attn="eca", attn_stage_kwargs=ECA_AUTHORS_K[:3])


def test_attention_sits_before_the_shortcut_addition():
    model = attnlab.create_model("resnet18", attn="se").eval()
    block = model.layer1[0]
    seen = {}
    block.attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    x = torch.randn(1, 64, 8, 8)
    y = block(x)
    expected_in = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(seen["inp"], expected_in)
    torch.testing.assert_close(y, torch.relu(seen["out"] + x))


@pytest.mark.parametrize(("output_stride", "strides"), [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16])])
def test_output_stride_by_dilation(output_stride, strides):
    model = attnlab.create_model("resnet50", attn="cbam", output_stride=output_stride)
    assert [f["stride"] for f in model.feature_info] == strides
    outs = model.forward_stages(torch.randn(1, 3, 64, 64))
    assert [64 // o.shape[-1] for o in outs] == strides
    assert [o.shape[1] for o in outs] == [f["channels"] for f in model.feature_info]
    # Same parameters as the classification network: dilation changes no shapes.
    assert count(model) == count(attnlab.create_model("resnet50", attn="cbam"))
    basic = attnlab.create_model("resnet18", output_stride=8)
    assert basic.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == 8
    with pytest.raises(ValueError, match="output_stride"):
        attnlab.create_model("resnet20", output_stride=8)
    with pytest.raises(ValueError, match="output_stride"):
        attnlab.create_model("resnet50", output_stride=4)


def test_heads_and_zero_init():
    model = attnlab.create_model("resnet18", attn="cbam", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    assert attnlab.create_model("resnet18", num_classes=0)(x).shape == (2, 512)
    # zero_init_last is off by default (as torchvision's): every block's last BN starts at 1.
    assert all((b.bn2.weight == 1).all() for layer in (model.layer1, model.layer4) for b in layer)
    # The attention keeps its own init: CBAM's official spatial BN starts at weight 0, not 1.
    assert (model.layer1[0].attn.spatial_gate.norm.weight == 0).all()
    assert len(model.attention_modules()) == 8
    zeroed = attnlab.create_model("resnet18", zero_init_last=True)
    assert all((b.bn2.weight == 0).all() for layer in (zeroed.layer1, zeroed.layer4) for b in layer)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "resnet50", "attn": "cbam", "attn_kwargs": {"preset": "paper"}},
        {"name": "resnet50", "attn": "eca", "attn_stage_kwargs": ECA_AUTHORS_K},
        {"name": "resnet18", "stage_attn": "bam", "output_stride": 16, "num_classes": 3},
        {"name": "resnet20", "attn": "se", "shortcut": "B", "num_classes": 100},
    ],
)
def test_config_rebuilds_the_model_exactly(kwargs):
    torch.manual_seed(0)
    model = attnlab.create_model(**kwargs).eval()
    for config in (model.config, json.loads(json.dumps(model.config))):
        rebuilt = attnlab.create_model(**config).eval()
        assert rebuilt.config == model.config
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(rebuilt(x), model(x))
    assert model.config["name"] == kwargs["name"]
    assert {"num_classes", "attn", "stage_attn", "output_stride", "zero_init_last"} <= set(
        model.config
    )


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as info:
        attnlab.create_model("resnet51")
    assert "resnet50" in str(info.value) and "resnet110" in str(info.value)
    with pytest.raises(ValueError) as info:
        attnlab.create_model("resnet18", attn="sea")
    assert "'sea'" in str(info.value) and "cbam" in str(info.value)
    with pytest.raises(TypeError, match="resnet18"):
        attnlab.create_model("resnet18", num_clases=10)
    assert {"resnet18", "resnet50", "resnet110"} <= set(attnlab.list_models())
    assert attnlab.list_models(dataset="cifar") == [
        "resnet110",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
    ]


def test_blocks_compile_in_one_graph():
    # under torch.compile the attention takes its reference path (the kernels decline while
    # compiling), so a block traces in one graph
    torch.manual_seed(0)
    block = attnlab.create_model("resnet50", attn="cbam").layer1[0].eval()
    x = torch.randn(2, 64, 8, 8)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)
