"""`attnlab segment train | eval | predict` end to end on a tiny setting; bad input → exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnlab.cli import main
from attnlab.cli.segment_cmd import voc_palette


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of danet_resnet20 on 16 synthetic 32×32 scenes; returns the run folder."""
    out = tmp_path_factory.mktemp("segment") / "run"
    argv = ["segment", "train", "--model", "danet_resnet20", "--image-size", "32",
            "--crop-size", "32", "--train-size", "16", "--val-size", "8", "--epochs", "1",
            "--batch-size", "8", "--scale", "0.75", "1.25", "--device", "cpu",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlab: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _image(path, width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_train_writes_the_run(trained, capsys):
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (trained / name).is_file()
    assert "danet_resnet20" in (trained / "config.yaml").read_text()


def test_eval_matches_training_and_takes_options(trained, capsys):
    capsys.readouterr()
    assert main(["segment", "eval", "--checkpoint", str(trained / "best.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["miou"] == pytest.approx(row["val_miou"])
    assert result["images"] == 8 and len(result["iou"]) == 5
    argv = ["segment", "eval", "--checkpoint", str(trained / "best.pt"), "--multi-scale",
            "--scales", "0.75", "1.0", "--flip", "--sliding", "--crop-size", "24"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "'scales': [0.75, 1.0], 'flip': True, 'crop_size': 24" in out


def test_predict_writes_masks_and_overlays_at_image_size(trained, tmp_path, capsys):
    images = [_image(tmp_path / "wide.png", 50, 37), _image(tmp_path / "b.jpg", 64, 64, seed=1)]
    out = tmp_path / "masks"
    argv = ["segment", "predict", "--checkpoint", str(trained / "last.pt"), "--out", str(out),
            *map(str, images), "--json"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["size"] for r in results] == [[50, 37], [64, 64]]
    palette = voc_palette()
    for result, stem in zip(results, ("wide", "b"), strict=True):
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == tuple(result["size"])
            assert mask.getpalette()[:6] == [*palette[0], *palette[1]]
            labels = np.asarray(mask)
        assert labels.max() < 5
        assert sum(result["classes"].values()) == pytest.approx(1.0)
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == tuple(result["size"])
    argv = ["segment", "predict", "--checkpoint", str(trained / "last.pt"), "--out", str(out),
            str(images[0]), "--sliding", "--flip"]  # fmt: skip
    assert main(argv) == 0
    assert "wide_mask.png" in capsys.readouterr().out


def test_train_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as done:
        main(["segment", "train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--head-lr-mult", "--poly-power", "--loss-pam", "--multi-scale", "--resume"):
        assert flag in text


def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys):
    checkpoint = str(trained / "last.pt")
    _one_line_error(capsys, ["segment"], "choose an action")
    _one_line_error(capsys, ["segment", "train", "--epochs", "0"], "SegmentConfig.epochs")
    _one_line_error(capsys, ["segment", "train", "--model", "resnet20"], "segmentation model")
    missing = str(tmp_path / "nope.png")
    _one_line_error(capsys, ["segment", "predict", "--checkpoint", checkpoint, missing], missing)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    _one_line_error(
        capsys, ["segment", "predict", "--checkpoint", checkpoint, str(broken)], "cannot read"
    )
    image = str(_image(tmp_path / "x.png", 20, 20))
    other = tmp_path / "sub"
    other.mkdir()
    twin = str(_image(other / "x.png", 20, 20))
    _one_line_error(
        capsys, ["segment", "predict", "--checkpoint", checkpoint, image, twin], "same outputs"
    )
    _one_line_error(capsys, ["segment", "predict", "--checkpoint", str(broken), image], "broken")
    _one_line_error(
        capsys, ["segment", "eval", "--checkpoint", str(tmp_path / "none.pt")], "not found"
    )
    config = tmp_path / "bad.yaml"
    config.write_text("epochz: 3\n")
    _one_line_error(capsys, ["segment", "train", "--config", str(config)], "epochz")
