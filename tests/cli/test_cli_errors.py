"""One-line errors (exit code 2, no traceback, the file or flag named) on every refused path:
NaN settings, a second run in one folder, checkpoints of another task or with weights that do
not fit their config, unsafe checkpoints, data errors inside DataLoader workers, decompression
bombs."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import attnlab
from attnlab.cli import main, one_line
from attnlab.engine.checkpoint import save_checkpoint


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnlab: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _checkpoint(path, name: str, task: str | None, **kwargs) -> str:
    model = attnlab.create_model(name, **kwargs)
    state = {"model": model.state_dict(), "model_config": model.config, "input_size": 64}
    if task:
        state["task"] = task
    save_checkpoint(path, state)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt")
    return {
        "cls": _checkpoint(base / "cls.pt", "resnet20", "classification", num_classes=3),
        "det": _checkpoint(
            base / "det.pt", "yolov4_tiny", "detection", num_classes=2, input_size=(64, 64)
        ),  # fmt: skip
        "seg": _checkpoint(base / "seg.pt", "fcn_resnet20", None, num_classes=3),
    }


def _image(path, size=(32, 32)) -> str:
    Image.new("RGB", size, (120, 30, 60)).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--lr", "nan"], "TrainConfig.lr: must be a finite number, got 'nan'"),
        (["train", "--lr", "inf"], "TrainConfig.lr: must be a finite number"),
        (["train", "--weight-decay", "nan"], "TrainConfig.weight_decay: must be a finite"),
        (["train", "--grad-clip", "nan"], "TrainConfig.grad_clip: must be a finite"),
        (["train", "--warmup-epochs", "nan"], "TrainConfig.warmup_epochs: must be a finite"),
        (["detect", "train", "--lr", "nan"], "DetectConfig.lr: must be a finite"),
        (["segment", "train", "--momentum", "inf"], "SegmentConfig.momentum: must be a finite"),
    ],
)
def test_non_finite_flags(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "never")]) == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "never").exists()


def test_a_second_run_into_the_same_out_is_refused(capsys, tmp_path):
    argv = ["train", "--train-size", "16", "--val-size", "8", "--image-size", "16", "--epochs",
            "1", "--batch-size", "8", "--no-progress", "--device", "cpu", "--precise-bn-images",
            "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "--resume" in line and "--overwrite" in line and str(tmp_path) in line
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("command", "kind", "needle"),
    [
        (["eval"], "det", "not a classification checkpoint: it holds a detection model"),
        (["predict", "IMAGE"], "seg", "not a classification checkpoint: it holds a segmentation"),
        (["detect", "eval"], "cls", "not a detection checkpoint: it holds a classification"),
        (["detect", "predict", "IMAGE"], "seg", "not a detection checkpoint"),
        (["segment", "eval"], "det", "not a segmentation checkpoint"),
    ],
)
def test_checkpoints_of_another_task(command, kind, needle, checkpoints, capsys, tmp_path):
    image = _image(tmp_path / "x.png")
    argv = [image if a == "IMAGE" else a for a in command]
    argv += ["--checkpoint", checkpoints[kind]]
    if "predict" in command and len(command) == 3:
        argv += ["--out", str(tmp_path / "pred")]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert needle in line and checkpoints[kind] in line


def test_a_checkpoint_whose_config_does_not_fit_its_weights(capsys, tmp_path):
    model = attnlab.create_model("resnet20", num_classes=3)
    path = tmp_path / "odd.pt"
    config = {**model.config, "num_classes": 5}
    save_checkpoint(path, {"model": model.state_dict(), "model_config": config})
    assert main(["eval", "--checkpoint", str(path)]) == 2
    line = _one_error_line(capsys)
    assert f"{path}: its weights do not fit its model config" in line


class Refused:
    """A class that safe (weights-only) loading does not know."""


def test_an_unsafe_checkpoint_names_the_refused_global(capsys, tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": Refused()}, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    line = _one_error_line(capsys)
    assert f"{__name__}.Refused" in line and str(path) in line
    assert "weights_only" not in line and "trust" not in line


class BadItem(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        raise ValueError(f"cannot read image /data/{index}.png: broken")


def test_worker_errors_become_their_own_last_line():
    with pytest.raises(ValueError) as info:
        next(iter(DataLoader(BadItem(), batch_size=2, num_workers=1)))
    assert "Original Traceback" in str(info.value)  # what torch re-raises from the worker
    assert one_line(info.value) == "cannot read image /data/0.png: broken"


def test_a_truncated_image_in_an_image_folder_is_one_line(capsys, tmp_path):
    for split, count in (("train", 4), ("val", 2)):
        for name in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / name)
            for i in range(count):
                _image(tmp_path / "data" / split / name / f"{i}.png")
    broken = tmp_path / "data" / "train" / "b" / "broken.jpg"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(broken, quality=90)
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG: headers fine, pixels gone
    argv = ["train", "--data", "folder", "--data-dir", str(tmp_path / "data"), "--image-size",
            "16", "--epochs", "1", "--batch-size", "4", "--workers", "1", "--no-progress",
            "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "broken.jpg" in line and "Original Traceback" not in line


def test_a_decompression_bomb_in_detect_predict(checkpoints, capsys, tmp_path, monkeypatch):
    image = _image(tmp_path / "bomb.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×64 > 2 × 1000: a "bomb"
    argv = ["detect", "predict", "--checkpoint", checkpoints["det"], image, "--out",
            str(tmp_path / "pred")]  # fmt: skip
    assert main(argv) == 2
    assert "bomb.png" in _one_error_line(capsys)


def test_a_truncated_image_read_inside_a_detection_worker_is_one_line(capsys, tmp_path):
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        os.makedirs(tmp_path / split / "images")
        os.makedirs(tmp_path / split / "labels")
        for i in range(4):
            pixels = (torch.rand(64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / split / "images" / f"{i}.jpg", quality=95)
            (tmp_path / split / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    broken = tmp_path / "train" / "images" / "2.jpg"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with Image.open(broken) as header:  # the header survives: the dataset builds, the worker
        assert header.size == (64, 64)  # fails when it decodes the pixels
    argv = ["detect", "train", "--data", "yolo", "--data-dir", str(tmp_path), "--class-names",
            "a,b", "--input-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "1",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "2.jpg: image file is truncated" in line and "Original Traceback" not in line
