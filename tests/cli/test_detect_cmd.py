"""`attnlab detect train`, `eval`, `predict` end to end on tiny synthetic data; bad input → 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnlab.cli import main
from attnlab.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One epoch of phi=2 (CBAM) at 64×64 on 8 synthetic scenes; returns the output folder."""
    out = tmp_path_factory.mktemp("detect") / "run"
    argv = ["detect", "train", "--phi", "2", "--input-size", "64", "--train-size", "8",
            "--val-size", "4", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_train_writes_the_run(run_dir, capsys):
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["model_config"]["phi"] == 2 and checkpoint["input_size"] == 64
    assert checkpoint["classes"][:2] == ["circle", "square"]


def test_eval_prints_the_per_class_table(run_dir, tmp_path, capsys):
    result = tmp_path / "eval.json"
    assert main(["detect", "eval", "--checkpoint", str(run_dir / "last.pt"), "--json",
                 str(result)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| class | GT | detections | AP@0.5 | AP@[.5:.95] |" in out
    assert "| circle |" in out and "| **mean** |" in out
    saved = json.loads(result.read_text())
    assert {"map50", "map", "per_class"} <= set(saved)


def test_predict_draws_on_images_of_their_own_size(run_dir, tmp_path, capsys):
    paths = []
    for name, (height, width) in (("wide.png", (60, 150)), ("tall.jpg", (130, 70))):
        pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    out = tmp_path / "pred"
    argv = ["detect", "predict", "--checkpoint", str(run_dir / "best.pt"), *paths,
            "--out", str(out), "--conf-threshold", "0.0"]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out / "wide.png").size == (150, 60)
    assert Image.open(out / "tall.png").size == (70, 130)
    records = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in records] == paths
    for record, (height, width) in zip(records, ((60, 150), (130, 70)), strict=True):
        assert record["detections"], "conf 0 keeps detections"
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert det["class"] in load_checkpoint(run_dir / "best.pt")["classes"]


@pytest.mark.parametrize("action", ["train", "eval", "predict"])
def test_help_lists_the_options(action, capsys):
    with pytest.raises(SystemExit) as info:
        main(["detect", action, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    expected = {
        "train": ["--phi", "--attn", "--input-size", "--data", "--resume", "--threads"],
        "eval": ["--checkpoint", "--split", "--data-dir", "--json"],
        "predict": ["--checkpoint", "--out", "--conf-threshold", "IMAGE"],
    }[action]
    assert all(option in text for option in expected)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "eval", "--checkpoint", "missing.pt"], "checkpoint not found: missing.pt"),
        (["detect", "predict", "--checkpoint", "missing.pt", "a.png"], "checkpoint not found"),
        (["detect", "train", "--data", "coco"], "DetectConfig.data: must be one of"),
        (["detect", "train", "--input-size", "100"], "multiple of 32, got 100"),
        (["detect", "train", "--data", "voc"], "needs a data directory"),
        (["detect", "train", "--data", "yolo", "--data-dir", "nowhere"], "not found: nowhere"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab: error: ") and message in err and err.count("\n") == 1


def test_bad_inference_options_are_one_line(run_dir, tmp_path, capsys):
    checkpoint = str(run_dir / "last.pt")
    assert main(["detect", "eval", "--checkpoint", checkpoint, "--input-size", "80"]) == 2
    assert "--input-size must be a positive multiple of 32, got 80" in capsys.readouterr().err
    missing = str(tmp_path / "nope.png")
    assert main(["detect", "predict", "--checkpoint", checkpoint, missing]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["detect"]) == 2


def test_yolo_layout_train_then_eval(tmp_path, capsys):
    """Files instead of synthetic scenes: classes.txt, <split>/images, <split>/labels."""
    rng = np.random.default_rng(1)
    (tmp_path / "classes.txt").write_text("dot\nbar\n")
    for split, count in (("train", 4), ("val", 2)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir()
        for i in range(count):
            pixels = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / "images" / f"{i}.png")
            (tmp_path / split / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.5\n")
    out = tmp_path / "run"
    argv = ["detect", "train", "--data", "yolo", "--data-dir", str(tmp_path), "--input-size", "64",
            "--epochs", "1", "--batch-size", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert load_checkpoint(out / "last.pt")["classes"] == ["dot", "bar"]
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(out / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "on yolo val (2 images, input 64)" in text and "| dot | 1 |" in text
