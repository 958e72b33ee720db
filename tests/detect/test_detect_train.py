"""Detection training: config checks, a short run whose loss falls (slow), resume, mismatches."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import attnlab
import attnlab.engine.trainer as train_module
from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.tasks.detect import load_detector, main
from attnlab.engine.tasks.detect_config import DetectConfig


def _config(out, **overrides) -> DetectConfig:
    options = {"input_size": 64, "train_size": 8, "val_size": 4, "epochs": 2, "batch_size": 4,
               "progress": False, "out": str(out)}  # fmt: skip
    return DetectConfig(**{**options, **overrides})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"input_size": 96 + 16}, r"input_size: must be a positive multiple of 32, got 112"),
        ({"data": "coco"}, r"data: must be one of synthetic, voc, yolo, got 'coco'"),
        ({"data": "voc"}, r"data_dir: data 'voc' needs a data directory"),
        ({"phi": 5}, r"phi: must be 0-4"),
        ({"attn": "nope"}, r"attn: unknown attention 'nope'"),
        ({"epochs": "x"}, r"DetectConfig.epochs: expected int, got 'x'"),
    ],
)
def test_bad_config_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        DetectConfig.from_dict(values)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("phi: 2\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown config key.*bogus"):
        DetectConfig.from_yaml(path)
    path.write_text("phi: 2\ninput_size: 128\n")
    assert DetectConfig.from_yaml(path, epochs=3).phi == 2


@pytest.mark.slow
def test_short_training_run_lowers_the_loss(tmp_path):
    config = _config(tmp_path, train_size=48, val_size=8, epochs=6, batch_size=8, lr=3e-3,
                     augment=False, warmup_epochs=0.5, threads=1)  # fmt: skip
    summary = main(config)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert set(rows[0]) >= {"train_loss", "box", "obj", "cls", "map50", "map", "time"}
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert summary["epochs"] == 6 and 0.0 <= summary["map50"] <= 1.0
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert checkpoint["classes"] == summary["classes"] and checkpoint["input_size"] == 64
    assert checkpoint["anchors"] == checkpoint["model_config"]["anchors"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    full = main(_config(tmp_path / "full"))
    real, calls = train_module.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in epoch 2
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    part = _config(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        main(part)
    monkeypatch.setattr(train_module, "train_one_epoch", real)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1

    resumed = main(dataclasses.replace(part, resume=str(tmp_path / "part" / "last.pt")))
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["epochs"] == 2 and resumed["map50"] == full["map50"]
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_into_another_phi_lists_the_differences(tmp_path):
    main(_config(tmp_path, epochs=1, phi=1))
    other = _config(tmp_path / "b", epochs=1, phi=2, resume=str(tmp_path / "last.pt"))
    with pytest.raises(ValueError, match=r"differing keys: .*phi: 1 in the checkpoint vs 2 here"):
        main(other)


def test_loading_into_a_model_of_another_config_lists_the_differences(tmp_path):
    main(_config(tmp_path, epochs=1))
    path = tmp_path / "last.pt"
    model, checkpoint = load_detector(path)  # rebuilt from the checkpoint: loads
    assert model.config == checkpoint["model_config"] and not model.training
    other = attnlab.create_model(
        "yolov4_tiny", num_classes=3, input_size=(64, 64),
        anchors=[(10, 10), (20, 20), (30, 30), (40, 40), (50, 50), (60, 60)],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"different model") as info:
        load_detector(path, other)
    assert "num_classes: 6 in the checkpoint vs 3 here" in str(info.value)
    assert "anchors:" in str(info.value)


def test_evaluation_caps_detections_per_image_and_class(monkeypatch):
    # COCO keeps 100 detections per image and class: the training-time evaluation must not
    # cut at 100 per image over all classes first.
    from attnlab.engine.tasks import detect as detect_task

    seen = {}

    def fake_predict(model, images, input_size, **options):
        seen.update(options)
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
                for _ in images]  # fmt: skip

    monkeypatch.setattr(detect_task, "predict", fake_predict)
    model = attnlab.create_model("yolov4_tiny", num_classes=7, phi=0)
    image = torch.rand(3, 32, 32)
    dataset = [(image, torch.tensor([[0, 4.0, 4.0, 20.0, 20.0]]))]
    detect_task.evaluate(model, dataset, 32)
    assert seen["max_det"] == 700
