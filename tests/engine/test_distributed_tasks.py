"""DDP for detection and segmentation on CPU (gloo) through torchrun: 2 processes against 1
process with the same global batch.

The models are the real ones with every BatchNorm swapped for GroupNorm(1, C): PyTorch's
SyncBatchNorm has no CPU kernel, so under CPU DDP BatchNorm would normalise each process's
half-batch with its own statistics (see test_distributed.py). The training data is not
augmented and the heads have no dropout, so both runs compute the same function of the same
global batches.

- Segmentation: the loss is the mean cross-entropy over pixels, and both shards hold the same
  number of pixels, so the mean of the shards' losses is the global loss: weights agree to
  rtol 1e-4 / atol 1e-6 (float summation order only).
- Detection: the YOLO loss normalises its box and objectness terms by the batch's matched and
  counted cells, so the mean of two half-batch losses is close to, not equal to, the
  full-batch loss. With SGD (Adam's per-weight normalisation would magnify the differences of
  near-zero gradients) the weights agree to atol 1e-6 / rtol 1e-2 (largest difference seen:
  2e-7), and the two processes hold identical weights (DDP's all-reduce).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from attnlab.engine.checkpoint import load_checkpoint

PREAMBLE = r'''
import json, os, sys
import torch
from torch import nn
import attnlab
from attnlab.registry import register_model


def group_norm(module):
    """Every BatchNorm2d of ``module`` replaced by GroupNorm(1, C) (no batch statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            group_norm(child)
    return module


def report(summary, model_state):
    rank = os.environ.get("RANK", "0")
    checksum = float(sum(t.double().abs().sum() for t in model_state.values()))
    with open(f"{sys.argv[1]}-rank{rank}.json", "w") as handle:
        json.dump({**{k: v for k, v in summary.items() if k != "per_class"},
                   "checksum": checksum}, handle, default=str)
'''

DETECT = (
    PREAMBLE
    + r"""
from attnlab.engine.tasks.detect import DetectConfig, DetectTask
from attnlab.engine.trainer import fit


@register_model("yolo_probe", task="detection")
def yolo_probe(attn=None, **kwargs):
    model = group_norm(attnlab.create_model("yolov4_tiny", attn=attn, **kwargs))
    model.config = {**model.config, "name": "yolo_probe"}
    return model


class Task(DetectTask):
    def build_model(self):
        self.model = super().build_model()
        return self.model


config = DetectConfig(model="yolo_probe", input_size=64, train_size=8, val_size=4, epochs=2,
                      batch_size=4, augment=False, optimizer="sgd", lr=1e-2, warmup_epochs=0.5,
                      deterministic=True, progress=False, out=sys.argv[1], device="cpu")
task = Task(config)
summary = fit(task, config)
report(summary, task.model.state_dict())
"""
)

SEGMENT = (
    PREAMBLE
    + r"""
from attnlab.data.segmentation import Normalize, synthetic_segmentation
from attnlab.engine.tasks.segment import MEAN, STD, SegmentConfig, SegmentTask
from attnlab.engine.trainer import fit


@register_model("fcn_probe", task="segmentation")
def fcn_probe(**kwargs):
    model = group_norm(attnlab.create_model("fcn_resnet20", **kwargs))
    model.config = {**model.config, "name": "fcn_probe"}
    return model


class Task(SegmentTask):
    def build_data(self, info):
        train, val = super().build_data(info)
        # The training scenes without augmentation: the same pixels in 1 and 2 processes.
        self.train_set = synthetic_segmentation(
            split="train", length=len(train), transform=Normalize(MEAN, STD), size=32,
            num_classes=4, difficulty="easy", num_targets=2, seed=0,
        )
        return self.train_set, val

    def build_model(self):
        self.model = super().build_model()
        return self.model


# No dropout: each process draws its own random stream, one process draws one stream.
config = SegmentConfig(model="fcn_probe", model_kwargs={"dropout": 0.0}, image_size=32,
                       crop_size=32, train_size=8, val_size=4, epochs=2, batch_size=4,
                       difficulty="easy", lr=0.01,
                       deterministic=True, progress=False, out=sys.argv[1], device="cpu")
task = Task(config)
summary = fit(task, config)
report(summary, task.model.state_dict())
"""
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(argv) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def _one_and_two(tmp_path, source: str) -> tuple[list[dict], dict, dict]:
    script = tmp_path / "worker.py"
    script.write_text(source)
    _run([sys.executable, str(script), str(tmp_path / "one")])
    _run([*TORCHRUN, str(script), str(tmp_path / "two")])
    summaries = [json.loads((tmp_path / f"{n}.json").read_text())
                 for n in ("one-rank0", "two-rank0", "two-rank1")]  # fmt: skip
    assert [s["world_size"] for s in summaries] == [1, 2, 2]
    assert summaries[1]["checksum"] == summaries[2]["checksum"]  # DDP kept the ranks in step
    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    assert len(two["rng"]) == 2 and two["task"] == one["task"]
    return summaries, one, two


@pytest.mark.slow
def test_segmentation_two_processes_match_one(tmp_path):
    summaries, one, two = _one_and_two(tmp_path, SEGMENT)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert summaries[1]["miou"] == summaries[2]["miou"]  # rank 0 evaluates, rank 1 receives
    assert summaries[1]["miou"] == pytest.approx(summaries[0]["miou"], abs=1e-3)
    rows = [
        [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    ]
    for x, y in zip(*rows, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_detection_two_processes_match_one(tmp_path):
    summaries, one, two = _one_and_two(tmp_path, DETECT)
    for key, value in one["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["model"][key], value, rtol=1e-2, atol=1e-6, msg=key)
    assert summaries[1]["map50"] == summaries[2]["map50"]  # rank 0 evaluates, rank 1 receives
    assert two["epoch"] == one["epoch"] == 2
