"""DDP on CPU (gloo) through torchrun: 2 processes match 1 process with the same global batch.

The model is BN-free on purpose: PyTorch's SyncBatchNorm has no CPU kernel, so under CPU DDP
BatchNorm normalises each process's half-batch with its own statistics, which is a different
computation from the 1-process run (on CUDA, attnlab converts BN to SyncBatchNorm). Without BN
the two runs compute the same averaged gradients, differing only in float summation order:
weights and validation loss agree to rtol 1e-4 / atol 1e-6 after 8 SGD steps (measured
differences are ~1e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.distributed import ShardSampler, setup

WORKER = r'''
import json
import os
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
from attnlab.registry import register_model
from attnlab.engine.config import TrainConfig
from attnlab.engine.train import main


class Probe(nn.Module):
    """Conv → ReLU → mean → linear: no BatchNorm (see the test module's docstring)."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        self.config = {"name": "ddp_probe", "num_classes": num_classes}

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


register_model("ddp_probe")(lambda attn=None, num_classes=4: Probe(num_classes))
generator = torch.Generator().manual_seed(0)
labels = torch.arange(32) % 4
images = torch.rand(32, 3, 8, 8, generator=generator) + labels[:, None, None, None] * 0.2
data = (TensorDataset(images, labels), TensorDataset(images[:13], labels[:13]), {"num_classes": 4})
config = TrainConfig(model="ddp_probe", epochs=2, batch_size=8, lr=0.1, warmup_epochs=0.5,
                     deterministic=True, progress=False, out=sys.argv[1], device="cpu")
summary = main(config, datasets=data)
with open(f"{sys.argv[1]}-rank{os.environ.get('RANK', '0')}.json", "w") as handle:
    json.dump(summary, handle)
'''


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _run([sys.executable, str(script), str(tmp_path / "one")])
    _run([*TORCHRUN, str(script), str(tmp_path / "two")])
    summaries = [json.loads((tmp_path / f"{n}.json").read_text())
                 for n in ("one-rank0", "two-rank0", "two-rank1")]  # fmt: skip
    assert [s["world_size"] for s in summaries] == [1, 2, 2]
    assert summaries[1]["val_loss"] == summaries[2]["val_loss"]  # reduced over processes
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6)
    assert len(b["rng"]) == 2  # each process's RNG state, for resume
    rows = [
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    ]
    for x, y in zip(*rows, strict=True):
        assert x["val_acc"] == y["val_acc"]  # 13 images, uneven shards, reduced exactly
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_cli_under_torchrun(tmp_path):
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 16), ("val", 5)):
        for name in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / name)
            for i in range(count):
                array = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(array).save(tmp_path / "data" / split / name / f"{i}.png")
    out = tmp_path / "run"
    result = _run([*TORCHRUN, "-m", "attnlab", "train", "--data", "folder", "--data-dir",
                   str(tmp_path / "data"), "--image-size", "32", "--epochs", "1", "--batch-size",
                   "16", "--out", str(out), "--no-progress", "--device", "cpu"])  # fmt: skip
    assert result.stdout.count("best_val_acc") == 1  # rank 0 alone prints
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_single_process_setup_and_shards():
    info = setup("cpu")
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    data = list(range(7))
    shards = [
        list(ShardSampler(data, type(info)(rank=r, world_size=3, device=info.device)))
        for r in range(3)
    ]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]  # no padding: every item counted once
