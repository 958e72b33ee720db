"""Resume: interrupted after epoch 1 and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny_data import make_data  # tests/engine is on sys.path (rootdir-relative import)

import attnlab.engine.train as train_module
import attnlab.engine.trainer as trainer
from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.config import TrainConfig


def _config(out, **overrides) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0.5, "progress": False,
               "deterministic": True, "label_smoothing": 0.1, "out": str(out)}  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    data = make_data(augment=True)
    full = train_module.main(_config(tmp_path / "full"), datasets=data)

    real = trainer.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in epoch 2
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    part = _config(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        train_module.main(part, datasets=data)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1

    resumed = dataclasses.replace(part, resume=str(tmp_path / "part" / "last.pt"))
    summary = train_module.main(resumed, datasets=data)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert summary["val_loss"] == full["val_loss"] and summary["epochs"] == 2
    rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # epoch 1 from the checkpoint's history, epoch 2 from the resumed run


def test_resume_into_another_model_lists_the_differences(tmp_path):
    data = make_data()
    train_module.main(_config(tmp_path, epochs=1, deterministic=False), datasets=data)
    other = _config(tmp_path / "b", attn="eca", resume=str(tmp_path / "last.pt"))
    with pytest.raises(ValueError, match=r"different model; differing keys: attn: None .* 'eca'"):
        train_module.main(other, datasets=data)
