"""`attnlab train`, `eval`, `predict` end to end on a tiny image folder; bad input → exit 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from attnlab.cli import main
from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.config import TrainConfig

CLASSES = ("blue", "red")


def _write_images(root, per_class: int, seed: int) -> None:
    """Noisy 32×32 PNGs: "red" images are red-dominant, "blue" ones blue-dominant."""
    generator = torch.Generator().manual_seed(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.rand(32, 32, 3, generator=generator) * 0.5
            pixels[..., 0 if name == "red" else 2] += 0.5
            array = (pixels * 255).to(torch.uint8).numpy()
            Image.fromarray(array).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of resnet20 + SE on 64 training images; returns (data_dir, out)."""
    base = tmp_path_factory.mktemp("cli")
    data = base / "data"
    _write_images(data / "train", per_class=32, seed=0)
    _write_images(data / "val", per_class=8, seed=1)
    out = base / "run"
    argv = ["train", "--model", "resnet20", "--attn", "se", "--data", "folder",
            "--data-dir", str(data), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
            "--lr", "0.05", "--out", str(out), "--no-progress", "--milestones", "3,4"]  # fmt: skip
    assert main(argv) == 0
    return data, out


def test_train_writes_the_run(trained, capsys):
    data, out = trained
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    config = TrainConfig.from_yaml(out / "config.yaml")
    assert (config.attn, config.image_size, config.milestones) == ("se", 32, [3, 4])
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["data_info"]["classes"] == list(CLASSES)
    assert checkpoint["model_config"]["num_classes"] == 2


def test_config_file_and_flags(trained, tmp_path, capsys):
    data, _ = trained
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: folder\ndata_dir: {data}\nimage_size: 32\nepochs: 5\nattn: eca\n")
    out = tmp_path / "run"
    argv = ["train", "--config", str(recipe), "--epochs", "1", "--batch-size", "32",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    config = TrainConfig.from_yaml(out / "config.yaml")
    assert (config.epochs, config.attn, config.batch_size) == (1, "eca", 32)
    assert "val_acc" in capsys.readouterr().out


def test_eval(trained, capsys):
    _, out = trained
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 16 and 0 <= result["acc"] <= 1
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert result["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    assert main(["eval", "--checkpoint", str(out / "best.pt")]) == 0
    assert "16 images" in capsys.readouterr().out


def test_predict(trained, capsys):
    data, out = trained
    images = [str(data / "val" / "red" / "0.png"), str(data / "val" / "blue" / "1.png")]
    assert main(["predict", "--checkpoint", str(out / "last.pt"), *images, "--topk", "5",
                 "--json"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == images
    for result in results:
        assert {row["class"] for row in result["top"]} == set(CLASSES)  # top-5 of 2 → 2
        assert sum(row["prob"] for row in result["top"]) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", "--checkpoint", str(out / "last.pt"), images[0], "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and lines[1].split()[1] in CLASSES and len(lines) == 2


def test_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name
    assert "--config YAML" in text and "--no-progress" in text


def _one_error_line(capsys, *fragments: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnlab: error:"), captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--attn", "nope"], ("attn", "nope")),
        (["train", "--model", "resnet7"], ("model", "resnet7")),
        (["train", "--epochs", "many"], ("epochs", "many")),
        (["train", "--data", "folder", "--data-dir", "/no/such/dir"], ("/no/such/dir",)),
        (["train", "--data", "cifar10"], ("data_dir",)),
        (["train", "--config", "/no/recipe.yaml"], ("/no/recipe.yaml",)),
        (["eval", "--checkpoint", "/no/model.pt"], ("/no/model.pt",)),
        (["predict", "--checkpoint", "/no/model.pt", "x.png"], ("/no/model.pt",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, fragments, capsys):
    assert main(argv) == 2
    _one_error_line(capsys, *fragments)


def test_predict_bad_image_and_topk(trained, tmp_path, capsys):
    _, out = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(broken)]) == 2
    _one_error_line(capsys, "broken.png")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(broken), "--topk", "0"]) == 2
    _one_error_line(capsys, "--topk")


def test_bad_input_from_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "attnlab", "train", "--attn", "nope"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("attnlab: error: TrainConfig.attn: unknown attention")
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_reproduces_the_training_validation_on_synthetic_data(tmp_path, capsys):
    # The synthetic normalisation comes from the training scenes: eval must rebuild them alike.
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--train-size", "48", "--val-size", "24",
            "--batch-size", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    history = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["count"] == 24 and result["acc"] == history["val_acc"]
    assert result["loss"] == pytest.approx(history["val_loss"], rel=1e-5)
