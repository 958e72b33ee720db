"""`attnlab viz` end to end: a trained tiny checkpoint, image files, every module, bad input."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image

import attnlab
from attnlab.cli import main
from attnlab.engine.checkpoint import save_checkpoint

CLASSES = ["circle", "square", "triangle", "cross", "ring", "star"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CBAM ResNet-20 checkpoint from `attnlab train` on 64 synthetic scenes (1 epoch)."""
    out = tmp_path_factory.mktemp("run")
    code = main(
        ["train", "--model", "resnet20", "--attn", "cbam", "--epochs", "1", "--train-size", "64",
         "--val-size", "16", "--batch-size", "32", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out / "last.pt"


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_synthetic_validation_scenes_end_to_end(trained, tmp_path, capsys):
    out = tmp_path / "viz"
    code = main(["viz", "--checkpoint", str(trained), "--count", "8", "--rows", "3",
                 "--target", "label", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| layer3.2.attn | layer3 | channel: 64×1×1" in printed
    assert "localisation on 8 scenes" in printed and "Grad-CAM pointing" in printed
    summary = json.loads((out / "summary.json").read_text())
    # Gallery: 3 rows; input + Grad-CAM + the last CBAM of each of 3 stages; 1.6-inch cells.
    assert png_size(out / "gallery.png") == (5 * 160, 3 * 160)
    assert summary["gallery_modules"] == ["layer1.2.attn", "layer2.2.attn", "layer3.2.attn"]
    overlays = sorted((out / "gradcam").iterdir())
    assert len(overlays) == 8 and all(png_size(p) == (128, 128) for p in overlays)  # 32 × 4
    assert png_size(out / "channel-weights.png")[0] > 0
    assert sorted(summary["files"]) == sorted(
        ["gallery.png", "channel-weights.png", *[f"gradcam/{p.name}" for p in overlays]]
    )
    assert len(summary["images"]) == 8
    assert all(i["explained"] == i["label"] for i in summary["images"])  # --target label
    assert {m["kind"] for m in summary["maps"]} == {"channel", "spatial"}
    assert len(summary["maps"]) == 18  # 9 modules × (channel, spatial)
    loc = summary["localization"]
    assert loc["count"] == 8 and 0 <= loc["gradcam"]["pointing"] <= 1
    assert len(loc["attention"]["modules"]) == 9
    assert summary["gradcam"] == {"layer": "layer3", "method": "gradcam", "target": "label"}


def test_image_files_with_a_named_target_and_gradcam_plus_plus(trained, tmp_path, capsys):
    files = []
    for i, size in enumerate([(40, 30), (20, 50)]):
        files.append(str(tmp_path / f"img {i}.png"))
        Image.new("RGB", size, (200, 40 * i, 10)).save(files[-1])
    out = tmp_path / "viz"
    code = main(["viz", "--checkpoint", str(trained), *files, "--target", "star", "--method",
                 "gradcam++", "--layer", "layer2", "--json", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert [i["source"] for i in summary["images"]] == files
    assert all(i["explained"] == "star" and i["label"] is None for i in summary["images"])
    assert summary["localization"] is None and summary["gradcam"]["layer"] == "layer2"
    assert (out / "gradcam" / "00-img-0.png").exists() and (
        out / "gradcam" / "01-img-1.png"
    ).exists()
    assert png_size(out / "gallery.png") == (5 * 160, 2 * 160)


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "bam", "ca", "pam", "cam"])
def test_every_registered_module(name, tmp_path, capsys):
    assert name in attnlab.list_attention()
    torch.manual_seed(0)
    where = {"stage_attn": name} if name == "bam" else {"attn": name}
    model = attnlab.create_model("resnet20", num_classes=6, **where)
    checkpoint = tmp_path / "ck.pt"
    save_checkpoint(checkpoint, {
        "model": model.state_dict(), "model_config": model.config,
        "data_info": {"classes": CLASSES, "num_classes": 6, "image_size": 32,
                      "mean": [0.3] * 3, "std": [0.2] * 3},
        "config": {"data": "synthetic", "image_size": 32, "difficulty": "default", "data_seed": 0},
    })  # fmt: skip
    out = tmp_path / "viz"
    code = main(["viz", "--checkpoint", str(checkpoint), "--count", "2", "--rows", "2",
                 "--modules", "all", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    modules = 2 if name == "bam" else 9
    assert len(summary["gallery_modules"]) == modules
    assert png_size(out / "gallery.png") == ((2 + modules) * 160, 2 * 160)
    assert (out / "channel-weights.png").exists() == (name not in ("pam", "cam"))
    spatial = name in ("cbam", "bam", "ca", "pam")
    assert (summary["localization"]["attention"] is not None) == spatial


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--target", "label", "IMAGE"], "--target label needs dataset images"),
        (["--target", "dog"], "--target 'dog'"),
        (["--target", "9"], "not a class index 0..5"),
        (["--layer", "layer7"], "no layer 'layer7'"),
        (["--count", "0"], "--count must be >= 1"),
        (["/nonexistent/cat.png"], "no such image"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, trained, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = [str(image) if a == "IMAGE" else a for a in argv]
    assert main(["viz", "--checkpoint", str(trained), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlab: error:") and needle in err and "\n" not in err


def test_missing_matplotlib_is_a_one_line_hint(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["viz", "--checkpoint", str(trained), "--out", str(tmp_path / "o")]) == 2
    assert "pip install attnlab[viz]" in capsys.readouterr().err


def test_an_image_folder_dataset(trained, tmp_path, capsys):
    # A real-data layout with the checkpoint's six classes: no masks, so no localisation.
    data = tmp_path / "imgs"
    for index, name in enumerate(CLASSES):
        for split in ("train", "val"):
            (data / split / name).mkdir(parents=True)
            colour = (40 * index, 255 - 40 * index, 128)
            Image.new("RGB", (24, 20), colour).save(data / split / name / "0.png")
    out = tmp_path / "viz"
    code = main(["viz", "--checkpoint", str(trained), "--data", "folder", "--data-dir", str(data),
                 "--count", "6", "--rows", "2", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(i["label"] for i in summary["images"]) == sorted(CLASSES)  # one per class
    assert summary.get("localization") is None
    assert png_size(out / "gallery.png") == (5 * 160, 2 * 160)
