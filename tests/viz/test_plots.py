"""PNG outputs open with the expected sizes; columns for every module; the missing-extra hint."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import attnlab
from attnlab.viz import plots
from attnlab.viz.plots import GalleryColumn


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes: the file is complete
        return image.size


def test_gallery_of_every_mode_has_the_expected_size(tmp_path):
    images = torch.rand(3, 3, 16, 12)  # non-square
    columns = [
        GalleryColumn("map", torch.rand(3, 1, 4, 3), labels=["a", "b", "c"]),
        GalleryColumn("weights", torch.rand(3, 10), "bars"),
        GalleryColumn("affinity", torch.rand(3, 6, 6), "matrix"),
    ]
    path = plots.save_gallery(
        images, columns, str(tmp_path / "sub" / "g.png"), cell=1.0, dpi=40,
        mean=[0.5] * 3, std=[0.2] * 3, row_labels=["x", "y", "z"],
    )  # fmt: skip
    assert png_size(path) == (4 * 40, 3 * 40)  # (input + 3 columns) × 3 rows of 1-inch cells


def test_gallery_rejects_mismatched_columns(tmp_path):
    with pytest.raises(ValueError, match="2 items for 3 images"):
        plots.save_gallery(torch.rand(3, 3, 8, 8), [GalleryColumn("m", torch.rand(2, 1, 8, 8))],
                           str(tmp_path / "g.png"))  # fmt: skip
    with pytest.raises(ValueError, match="mode"):
        plots.save_gallery(torch.rand(1, 3, 8, 8), [GalleryColumn("m", torch.rand(1, 4), "pie")],
                           str(tmp_path / "g.png"))  # fmt: skip


def test_overlay_blends_the_heat_where_it_is(tmp_path):
    image = np.zeros((8, 8, 3))
    heat = torch.zeros(1, 2, 2)
    heat[0, 0, 1] = 1.0  # top-right
    blended = plots.overlay(image, heat, alpha=1.0, cmap="gray")
    assert blended.shape == (8, 8, 3)
    assert blended[0, 7].min() > 0.9 and blended[7, 0].max() < 0.1
    path = plots.save_overlay(image, heat, str(tmp_path / "o.png"), scale=4)
    assert png_size(path) == (32, 32)


def test_to_display_undoes_the_normalisation():
    image = torch.rand(3, 4, 5)
    shown = plots.to_display((image - 0.4) / 0.2, mean=[0.4] * 3, std=[0.2] * 3)
    np.testing.assert_allclose(shown, image.permute(1, 2, 0).numpy(), atol=1e-6)
    assert plots.to_display(torch.rand(1, 4, 5)).shape == (4, 5, 3)  # grey → RGB


def test_channel_histograms(tmp_path):
    path = plots.save_channel_histograms(
        {"layer1": torch.rand(100), "layer2": torch.rand(50)}, str(tmp_path / "h.png"), dpi=50
    )
    assert png_size(path) == (2 * 160, 130)  # 3.2 × 2.6 inches per stage at 50 dpi
    with pytest.raises(ValueError, match="no channel weights"):
        plots.save_channel_histograms({}, str(tmp_path / "h.png"))


# The gallery mode of every registered module's maps: channel weights as bars, maps as overlays.
CHECKED_MODES = [
    ("se", "bars"), ("eca", "bars"), ("cbam", "overlay"), ("bam", "overlay"), ("ca", "overlay"),
    ("pam", "overlay"), ("cam", "matrix"), ("ese", "bars"), ("fca", "bars"), ("sk", "bars"),
    ("srm", "bars"), ("ge", "bars"), ("sa", "overlay"), ("gc", "overlay"), ("simam", "overlay"),
    ("triplet", "overlay"), ("scse", "overlay"), ("sge", "overlay"), ("ema", "overlay"),
    ("ela", "overlay"), ("gam", "overlay"), ("nl", "overlay"), ("cc", "overlay"),
    ("a2", "overlay"), ("psa", "overlay"), ("effattn", "overlay"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "mode"), CHECKED_MODES)
def test_model_columns_for_every_registered_module(name, mode, tmp_path):
    torch.manual_seed(0)
    where = {"stage_attn": name} if name == "bam" else {"attn": name}
    model = attnlab.create_model("resnet20", num_classes=3, **where).eval()
    images = torch.randn(2, 3, 32, 32)
    columns, info = plots.model_columns(model, images, class_names=["a", "b", "c"])
    per_stage = 2 if name == "bam" else 3
    assert len(columns) == 1 + per_stage and columns[0].title == "Grad-CAM layer3"
    assert [c.mode for c in columns[1:]] == [mode] * per_stage
    assert columns[0].labels[0].split()[0] in ("a", "b", "c")
    everything, _ = plots.model_columns(model, images, modules="all", method="gradcam++")
    assert len(everything) == 1 + (2 if name == "bam" else 9)
    assert everything[0].title == "Grad-CAM++ layer3"
    path = plots.save_gallery(images, columns, str(tmp_path / "g.png"), cell=1.0, dpi=30)
    assert png_size(path) == (30 * len(columns) + 30, 60)


def test_all_modules_are_checked_here():
    checked = {name for name, _ in CHECKED_MODES}
    assert checked == set(attnlab.list_attention())


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(ImportError, match=r"pip install attnlab\[viz\]"):
        plots.require_matplotlib()
    with pytest.raises(ImportError, match=r"attnlab\[viz\]"):
        plots.save_gallery(torch.rand(1, 3, 8, 8), [], str(tmp_path / "g.png"))
