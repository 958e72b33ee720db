"""A run never destroys an earlier one: --out refusal, --overwrite, the lock, leftovers, best.pt
after a crash between the two checkpoint writes, file permissions, strict metrics.jsonl."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from _tiny_data import make_data  # tests/engine is on sys.path (rootdir-relative import)
from torch.utils.data import TensorDataset

import attnlab.engine.trainer as trainer
from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.config import TrainConfig
from attnlab.engine.rundir import LOCK, RunFolder
from attnlab.engine.tasks.classify import ClassifyTask
from attnlab.engine.train import main

EVALUATE = ClassifyTask.evaluate


def _config(out, **overrides) -> TrainConfig:
    options = {"epochs": 1, "batch_size": 8, "lr": 0.05, "progress": False, "out": str(out),
               "precise_bn_images": 0}  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    data = make_data()
    main(_config(tmp_path), datasets=data)
    before = {n: (tmp_path / n).read_bytes() for n in ("config.yaml", "metrics.jsonl", "last.pt")}
    with pytest.raises(ValueError, match=r"holds an earlier run .*--resume .*--overwrite"):
        main(_config(tmp_path, lr=0.01), datasets=data)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # nothing touched
    summary = main(_config(tmp_path, lr=0.01, overwrite=True), datasets=data)
    assert summary["epochs"] == 1 and "lr: 0.01" in (tmp_path / "config.yaml").read_text()


def test_a_run_failing_on_its_data_leaves_the_folder_alone(tmp_path):
    main(_config(tmp_path), datasets=make_data())
    config_yaml = (tmp_path / "config.yaml").read_bytes()
    empty = (TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0).long()),) * 2
    with pytest.raises(ValueError, match="empty"):
        main(_config(tmp_path, overwrite=True), datasets=(*empty, {"num_classes": 2}))
    assert (tmp_path / "config.yaml").read_bytes() == config_yaml
    assert (tmp_path / "last.pt").is_file()


def test_the_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname()[1]}))
        with pytest.raises(ValueError, match=rf"another run \(process {sleeper.pid}\)"):
            main(_config(tmp_path), datasets=make_data())
    finally:
        sleeper.kill()
        sleeper.wait()
    # The process is gone: its lock is stale and the next run takes the folder.
    assert main(_config(tmp_path), datasets=make_data())["epochs"] == 1
    assert not (tmp_path / LOCK).exists()  # released at the end


def test_leftover_temporaries_are_removed_and_files_are_not_private(tmp_path):
    main(_config(tmp_path, epochs=2), datasets=make_data())
    leftovers = [".last.pt.tmp-999-abcd", ".best.pt.x1y2z3", ".metrics.jsonl.tmp-1-ff"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"partial")
    resumed = _config(tmp_path, epochs=3, resume=str(tmp_path / "last.pt"))
    main(resumed, datasets=make_data())
    assert not any((tmp_path / name).exists() for name in leftovers)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_run_folder_context_alone(tmp_path):
    out = tmp_path / "x"
    with RunFolder(str(out)):
        assert (out / LOCK).exists()
        with pytest.raises(ValueError, match="another run"), RunFolder(str(out)):
            pass
    assert not (out / LOCK).exists()


def _scripted_accuracy(monkeypatch, accuracies: list[float]) -> None:
    """The task's evaluation reports ``accuracies`` in turn (controls when best.pt is due)."""

    def scripted(self, model, info):
        return {**EVALUATE(self, model, info), "acc": accuracies.pop(0)}

    monkeypatch.setattr(ClassifyTask, "evaluate", scripted)


def test_best_pt_agrees_with_the_reported_best_after_a_crash_between_writes(tmp_path, monkeypatch):
    data = make_data()
    _scripted_accuracy(monkeypatch, [0.5, 0.7])
    real_save, writes = trainer.save_checkpoint, []

    def save_then_die(path, state):
        writes.append((os.path.basename(path), state["epoch"]))
        if state["epoch"] == 2 and len([w for w in writes if w[1] == 2]) == 2:
            raise KeyboardInterrupt  # killed between the epoch's two checkpoint writes
        real_save(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(_config(tmp_path, epochs=3), datasets=data)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    assert [w for w in writes if w[1] == 2] == [("best.pt", 2), ("last.pt", 2)]

    _scripted_accuracy(monkeypatch, [0.6, 0.65])  # epoch 2 again (worse), then epoch 3
    resumed = _config(tmp_path, epochs=3, resume=str(tmp_path / "last.pt"))
    summary = main(resumed, datasets=data)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["best_val_acc"] == 0.7
    assert summary["best_val_acc"] == 0.7 == load_checkpoint(tmp_path / "last.pt")["best_val_acc"]


def test_metrics_jsonl_is_strict_json_with_null_for_nan(tmp_path, monkeypatch):
    real = ClassifyTask.evaluate
    monkeypatch.setattr(
        ClassifyTask, "evaluate", lambda self, m, i: {**real(self, m, i), "loss": float("nan")}
    )
    main(_config(tmp_path, epochs=2), datasets=make_data())

    def refuse(constant):
        raise AssertionError(f"bare {constant} in metrics.jsonl")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [r["val_loss"] for r in rows] == [None, None]
    assert "val_loss" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_resume_lists_changed_settings_and_refuses_them_unless_allowed(tmp_path):
    data = make_data()
    main(_config(tmp_path), datasets=data)
    last = str(tmp_path / "last.pt")
    changed = _config(tmp_path, epochs=2, lr=0.2, batch_size=4, resume=last)
    with pytest.raises(
        ValueError, match=r"settings differ .*--batch-size: 8 → 4.*--lr: 0.05 → 0.2"
    ):
        main(changed, datasets=data)
    smaller = (*make_data(n=24)[:2], data[2])
    with pytest.raises(ValueError, match=r"training items: 32 → 24"):
        main(_config(tmp_path, epochs=2, resume=last), datasets=smaller)
    summary = main(dataclasses.replace(changed, allow_changes=True), datasets=data)
    assert summary["epochs"] == 2
