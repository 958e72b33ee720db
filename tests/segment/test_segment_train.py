"""Segmentation training: config, recipe (poly LR, head 10×), resume, config mismatch, and a
short run on easy synthetic scenes whose mIoU improves (slow)."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.engine.checkpoint import load_checkpoint, save_checkpoint
from attnlab.engine.tasks.segment import (
    build_optimizer,
    evaluate_checkpoint,
    load_segmenter,
    main,
    poly_scheduler,
)
from attnlab.engine.tasks.segment_config import SegmentConfig

TINY = {"model": "fcn_resnet20", "image_size": 32, "crop_size": 32, "train_size": 16,
        "val_size": 8, "batch_size": 8, "progress": False, "device": "cpu"}  # fmt: skip


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    summary = main(SegmentConfig(**TINY, epochs=2, out=str(out)))
    return out, summary


def test_config_parses_and_refuses():
    config = SegmentConfig(scale="0.75, 1.5", multi_scale="yes", flip=True, num_classes="4")
    assert config.scale == [0.75, 1.5] and config.num_classes == 4
    assert config.eval_options() == {
        "scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), "flip": True, "crop_size": None,
    }  # fmt: skip
    for values, field in [({"model": "resnet20"}, "model"), ({"lr": 0}, "lr"),
                          ({"scale": [2.0, 1.0]}, "scale"), ({"data": "voc"}, "data_dir"),
                          ({"epochs": "x"}, "epochs"), ({"amp": "fp16"}, "amp")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"SegmentConfig.{field}"):
            SegmentConfig(**values)
    with pytest.raises(ValueError, match="unknown config key"):
        SegmentConfig.from_dict({"epoch": 3})


def test_head_lr_is_ten_times_and_poly_decays():
    model = attnlab.create_model("danet_resnet20", num_classes=3)
    config = SegmentConfig(lr=0.01, weight_decay=1e-4)
    optimizer = build_optimizer(model, config)
    head = {id(p) for p in model.head.parameters()}
    seen = 0
    for group in optimizer.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1  # a group is all backbone or all head
        assert group["lr"] == pytest.approx(0.1 if is_head.pop() else 0.01)
        assert group["weight_decay"] == (1e-4 if group["params"][0].ndim >= 2 else 0.0)
        seen += len(group["params"])
    assert seen == len(list(model.parameters()))
    scheduler = poly_scheduler(optimizer, total_steps=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.01 * 0.5**0.9)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_run_writes_metrics_and_checkpoints(tiny_run):
    out, summary = tiny_run
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file()
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]["val_iou"]) == {"background", "circle", "square", "triangle", "cross"}
    assert {"train_loss", "train_loss_out", "val_miou", "val_pixel_acc", "lr"} <= set(rows[0])
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["config"]["model"] == "fcn_resnet20" and checkpoint["epoch"] == 2
    assert checkpoint["data_info"]["num_classes"] == 5
    assert SegmentConfig.from_yaml(out / "config.yaml").to_dict() == checkpoint["config"]
    assert summary["miou"] == pytest.approx(rows[-1]["val_miou"])
    result = evaluate_checkpoint(out / "last.pt", device="cpu")
    assert result["miou"] == pytest.approx(rows[-1]["val_miou"])
    flipped = evaluate_checkpoint(out / "last.pt", device="cpu", flip=True, sliding=True)
    assert flipped["options"] == {"scales": [1.0], "flip": True, "crop_size": 32}


def test_resume_trains_on(tiny_run, tmp_path):
    out, _ = tiny_run
    summary = main(SegmentConfig(**TINY, epochs=3, out=str(tmp_path), resume=str(out / "last.pt")))
    assert summary["epochs"] == 3 and [r["epoch"] for r in _rows(tmp_path)] == [1, 2, 3]
    assert _rows(tmp_path)[:2] == _rows(out)


def test_resume_after_an_interruption_matches(tiny_run, tmp_path, monkeypatch):
    """Two epochs in one go, or epoch 1, a crash, and a resume: the same weights."""
    import attnlab.engine.trainer as train

    straight, _ = tiny_run
    original = train.save_checkpoint

    def save_then_crash(path, state):
        original(path, state)
        if state["epoch"] == 1 and str(path).endswith("last.pt"):
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    config = SegmentConfig(**TINY, epochs=2, out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        main(config)
    monkeypatch.setattr(train, "save_checkpoint", original)
    config.resume = str(tmp_path / "last.pt")
    assert main(config)["epochs"] == 2
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], msg=name)
    assert [r["epoch"] for r in _rows(tmp_path)] == [1, 2]


def test_resume_into_another_model_lists_differences(tiny_run, tmp_path):
    out, _ = tiny_run
    config = SegmentConfig(**{**TINY, "model": "danet_resnet20"}, epochs=3, out=str(tmp_path),
                           resume=str(out / "last.pt"))  # fmt: skip
    with pytest.raises(ValueError, match="different model") as error:
        main(config)
    assert "name: 'fcn_resnet20' in the checkpoint vs 'danet_resnet20' here" in str(error.value)
    config = SegmentConfig(**TINY, num_classes=4, epochs=3, out=str(tmp_path),
                           resume=str(out / "last.pt"))  # fmt: skip
    with pytest.raises(ValueError, match="num_classes: 5 in the checkpoint vs 4 here"):
        main(config)


def test_voc_folder_trains_and_evaluates_images_of_any_size(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 30), "b": (36, 44), "c": (50, 34), "d": (28, 28)}  # width, height
    for name, (width, height) in sizes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
        labels = rng.integers(0, 3, (height, width), dtype=np.uint8)
        labels[0] = 255
        Image.fromarray(labels).save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\nc\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("b\nd\n")
    options = {**TINY, "batch_size": 2, "crop_size": 24, "num_classes": 3}
    config = SegmentConfig(**options, data="voc", data_dir=str(root), epochs=1, out=str(tmp_path))
    summary = main(config)
    assert len(summary["iou"]) == 3 and summary["epochs"] == 1
    result = evaluate_checkpoint(tmp_path / "last.pt", device="cpu", sliding=True)
    assert result["images"] == 2 and 0.0 <= result["miou"] <= 1.0


def test_load_segmenter_refuses_a_classifier(tmp_path):
    model = attnlab.create_model("resnet20", num_classes=3)
    path = tmp_path / "cls.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config})
    with pytest.raises(ValueError, match="not a segmentation checkpoint"):
        load_segmenter(path)


def test_bf16_epoch_runs(tmp_path):
    summary = main(SegmentConfig(**{**TINY, "model": "danet_resnet20"}, epochs=1, amp="bf16",
                                 out=str(tmp_path)))  # fmt: skip
    assert summary["epochs"] == 1 and 0.0 <= summary["miou"] <= 1.0
    assert set(_rows(tmp_path)[0]) >= {"train_loss_out", "train_loss_pam", "train_loss_cam"}


@pytest.mark.slow
def test_short_danet_run_improves_miou(tmp_path):
    """danet_resnet20 on easy 32×32 scenes (3 classes): mIoU rises well above its first epoch
    (about 20 s on 2 cores)."""
    config = SegmentConfig(model="danet_resnet20", difficulty="easy", num_classes=3,
                           num_targets=1, image_size=32, crop_size=32, scale=[0.75, 1.25],
                           train_size=192, val_size=48, epochs=6, batch_size=16, lr=0.02,
                           progress=False, device="cpu", out=str(tmp_path))  # fmt: skip
    summary = main(config)
    mious = [row["val_miou"] for row in _rows(tmp_path)]
    assert summary["best_miou"] == pytest.approx(max(mious))
    assert mious[-1] > mious[0] + 0.1, mious
    assert mious[-1] > 0.6, mious
