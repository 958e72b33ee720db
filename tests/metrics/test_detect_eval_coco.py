"""``attnlab detect eval --metric coco``: pycocotools' numbers for a detector checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest

import attnlab
from attnlab.cli import main
from attnlab.engine.checkpoint import save_checkpoint
from attnlab.engine.tasks.detect import DetectConfig, build_dataset
from attnlab.metrics.coco import STAT_NAMES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained phi=1 detector's checkpoint on three synthetic validation scenes."""
    config = DetectConfig.from_dict({"val_size": 3, "input_size": 64})
    classes = list(build_dataset(config, "val").classes)
    model = attnlab.create_model("yolov4_tiny", num_classes=len(classes), phi=1)
    path = tmp_path_factory.mktemp("coco") / "c.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config,
                           "config": dataclasses.asdict(config), "classes": classes,
                           "input_size": 64, "task": "detection"})  # fmt: skip
    return path


def test_coco_metric_table_and_json(checkpoint, tmp_path, capsys):
    target = tmp_path / "coco.json"
    argv = ["detect", "eval", "--checkpoint", str(checkpoint), "--metric", "coco"]
    assert main([*argv, "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert "| map | " in out and "| mar_large | " in out and "| circle | " in out
    saved = json.loads(target.read_text())
    assert set(STAT_NAMES) <= set(saved) and len(saved["per_class"]) == 6
    assert 0 <= saved["map"] <= 1
    assert sum(row["num_gt"] for row in saved["per_class"]) > 0


def test_unknown_metric_is_a_usage_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "eval", "--checkpoint", str(checkpoint), "--metric", "f1"])
    assert exit_info.value.code == 2 and "--metric" in capsys.readouterr().err
