"""A run killed with SIGKILL (mid-epoch, or mid-write of a checkpoint) and resumed: the stale
lock is taken over, the temporary file of the interrupted write is removed, and best.pt holds
the best score the resumed run reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.config import TrainConfig
from attnlab.engine.rundir import LOCK
from attnlab.engine.train import main

CHILD = r"""
import os, signal, sys
import torch
from torch.utils.data import Dataset
import attnlab.engine.files as files
from attnlab.engine.config import TrainConfig
from attnlab.engine.train import main

out, where = sys.argv[1], sys.argv[2]
generator = torch.Generator().manual_seed(0)
labels = torch.arange(32) % 4
images = torch.rand(32, 3, 16, 16, generator=generator) * 0.5 + labels[:, None, None, None] * 0.1


class Killing(Dataset):
    # Dies in the middle of epoch 2 when asked ("epoch").
    calls = 0

    def __len__(self):
        return 32

    def __getitem__(self, index):
        Killing.calls += 1
        if where == "epoch" and Killing.calls == 32 + 12:
            os.kill(os.getpid(), signal.SIGKILL)
        return images[index], labels[index]


if where == "write":
    real = files.atomic_write
    count = [0]

    def dying_write(path, write):
        # The third checkpoint write (epoch 2's first): half the bytes, then SIGKILL.
        if str(path).endswith(".pt"):
            count[0] += 1
            if count[0] == 3:
                def half(handle):
                    handle.write(b"PK partial checkpoint")
                    handle.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(path, half)
        return real(path, write)

    files.atomic_write = dying_write
    import attnlab.engine.checkpoint as checkpoint
    checkpoint.atomic_write = dying_write

val = torch.utils.data.TensorDataset(images[:16], labels[:16])
config = TrainConfig(epochs=3, batch_size=8, lr=0.05, progress=False, out=out,
                     precise_bn_images=0, deterministic=True)
main(config, datasets=(Killing(), val, {"num_classes": 4}))
"""


def _data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 4
    images = (
        torch.rand(32, 3, 16, 16, generator=generator) * 0.5 + labels[:, None, None, None] * 0.1
    )
    return (
        TensorDataset(images, labels),
        TensorDataset(images[:16], labels[:16]),
        {"num_classes": 4},
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch", "write"])
def test_killed_and_resumed(tmp_path, where):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, str(script), str(out), where], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (out / LOCK).exists()  # left behind by the killed run
    temporaries = [n for n in os.listdir(out) if n.startswith(".")]
    assert bool(temporaries) == (where == "write")
    assert load_checkpoint(out / "last.pt")["epoch"] == 1

    config = TrainConfig(epochs=3, batch_size=8, lr=0.05, progress=False, out=str(out),
                         precise_bn_images=0, deterministic=True,
                         resume=str(out / "last.pt"))  # fmt: skip
    summary = main(config, datasets=_data())
    assert summary["epochs"] == 3
    assert sorted(os.listdir(out)) == ["best.pt", "config.yaml", "last.pt", "metrics.csv",
                                       "metrics.jsonl"]  # fmt: skip
    best = load_checkpoint(out / "best.pt")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert best["best_val_acc"] == summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert rows[best["epoch"] - 1]["val_acc"] == best["best_val_acc"]
