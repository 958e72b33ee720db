"""The attention registry: names, metadata, creation, and its refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlab
from attnlab.registry import ATTENTION_KINDS, Registry

# Class, arXiv id (SimAM has none: ICML 2021), year and kind of every registered module,
# written from the papers.
EXPECTED = {
    "se": ("SE", "1709.01507", 2018, "channel"),
    "cbam": ("CBAM", "1807.06521", 2018, "hybrid"),
    "eca": ("ECA", "1910.03151", 2020, "channel"),
    "bam": ("BAM", "1807.06514", 2018, "hybrid"),
    "pam": ("PositionAttention", "1809.02983", 2019, "self-attention"),
    "cam": ("ChannelAttention", "1809.02983", 2019, "self-attention"),
    "ca": ("CoordAttention", "2103.02907", 2021, "hybrid"),
    "ese": ("EffectiveSE", "1911.06667", 2020, "channel"),
    "gc": ("GlobalContext", "1904.11492", 2019, "hybrid"),
    "ge": ("GatherExcite", "1810.12348", 2018, "hybrid"),
    "sk": ("SelectiveKernel", "1903.06586", 2019, "channel"),
    "simam": ("SimAM", None, 2021, "hybrid"),
    "triplet": ("TripletAttention", "2010.03045", 2021, "hybrid"),
    "scse": ("SCSE", "1803.02579", 2018, "hybrid"),
    "fca": ("MultiSpectralAttention", "2012.11879", 2021, "channel"),
    "sge": ("SpatialGroupEnhance", "1905.09646", 2019, "spatial"),
    "sa": ("ShuffleAttention", "2102.00240", 2021, "hybrid"),
    "ema": ("EMA", "2305.13563", 2023, "hybrid"),
    "ela": ("ELA", "2403.01123", 2024, "hybrid"),
    "gam": ("GAM", "2112.05561", 2021, "hybrid"),
    "srm": ("SRM", "1903.10829", 2019, "channel"),
    "nl": ("NonLocalBlock", "1711.07971", 2018, "self-attention"),
    "cc": ("CrissCrossAttention", "1811.11721", 2019, "self-attention"),
    "a2": ("DoubleAttention", "1810.11579", 2018, "self-attention"),
    "psa": ("PolarizedSelfAttention", "2107.00782", 2021, "self-attention"),
    "effattn": ("EfficientAttention", "1812.01243", 2021, "self-attention"),
}


def test_short_names_and_metadata():
    assert set(EXPECTED) == set(attnlab.list_attention())
    for name, (cls, arxiv, year, kind) in EXPECTED.items():
        info = attnlab.attention_info(name)
        assert (info["class"], info["year"], info["kind"]) == (cls, year, kind)
        if arxiv is not None:
            assert info["arxiv"] == arxiv
        assert info["paper"]
        assert type(attnlab.create_attention(name, 16)).__name__ == cls


def test_list_by_kind():
    assert attnlab.list_attention("channel") == ["eca", "ese", "fca", "se", "sk", "srm"]
    assert attnlab.list_attention("self-attention") == [
        "a2",
        "cam",
        "cc",
        "effattn",
        "nl",
        "pam",
        "psa",
    ]
    for kind in ATTENTION_KINDS:
        for name in attnlab.list_attention(kind):
            assert attnlab.attention_info(name)["kind"] == kind
    with pytest.raises(ValueError, match="kind must be one of"):
        attnlab.list_attention("sideways")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        attnlab.create_attention("cbma", 64)
    message = str(info.value)
    assert "'cbma'" in message
    for name in EXPECTED:
        assert name in message


@pytest.mark.parametrize("none", [None, False, "", "none"])
def test_no_attention(none):
    assert attnlab.create_attention(none, 64) is None


def test_class_and_callable_and_kwargs():
    m = attnlab.create_attention(attnlab.SE, 64, rd_ratio=1 / 4)
    assert isinstance(m, attnlab.SE) and m.fc1.out_features == 16
    m = attnlab.create_attention(lambda c, **kw: nn.Identity(), 64)
    assert isinstance(m, nn.Identity)
    m = attnlab.create_attention("cbam", 64, preset="paper", order="parallel")
    assert m.order == "parallel" and m.spatial_gate.pool_order == ("mean", "max")


def test_refusals():
    with pytest.raises(TypeError, match="not a module instance"):
        attnlab.create_attention(attnlab.SE(8), 8)
    with pytest.raises(TypeError, match="must be a name, a class or None"):
        attnlab.create_attention(3, 8)
    with pytest.raises(TypeError, match="not an nn.Module"):
        attnlab.create_attention(lambda c: torch.zeros(c), 8)
    with pytest.raises(TypeError, match="unexpected keyword"):
        attnlab.create_attention("se", 8, reduction=4)
    with pytest.raises(ValueError, match="preset must be one of"):
        attnlab.create_attention("cbam", 8, preset="mine")


def test_registry_refuses_duplicates_and_bad_names():
    registry = Registry("thing")

    @registry.register("a", colour="red")
    def make_a():
        return 1

    assert registry.names() == ["a"] and registry.names(colour="red") == ["a"]
    assert registry.get("a").factory is make_a and "a" in registry and len(registry) == 1
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(make_a)
    with pytest.raises(ValueError, match="lower case"):
        registry.register("A")
    with pytest.raises(ValueError, match="unknown thing 'b'; valid names: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="already registered"):
        attnlab.register_attention("se", paper="x", arxiv="0", year=2000, kind="channel")(
            attnlab.SE
        )
    with pytest.raises(ValueError, match="kind must be one of"):
        attnlab.register_attention("new", paper="x", arxiv="0", year=2000, kind="odd")


def test_preset_selects_paper_or_authors_code_wherever_they_differ():
    paper = {
        "cbam": lambda m: m.spatial_gate.pool_order == ("mean", "max"),
        "bam": lambda m: m.fusion == "sum",
        "cam": lambda m: m.variant == "paper",
        "ca": lambda m: m.conv1.out_channels == 8,
    }
    for name, is_paper in paper.items():
        assert is_paper(attnlab.create_attention(name, 64, preset="paper")), name
    assert attnlab.create_attention("cam", 8, preset="paper", variant="official").variant == (
        "official"
    )
    with pytest.raises(ValueError, match="ChannelAttention: preset must be one of"):
        attnlab.create_attention("cam", 8, preset="yolo")


def test_classifiers_exclude_models_that_declare_another_task():
    from attnlab.registry import list_classifiers

    names = list_classifiers()
    assert {"resnet20", "resnet50"} <= set(names)
    assert "yolov4_tiny" not in names and "danet_resnet50" not in names
    assert set(names) <= set(attnlab.list_models())
