"""train_one_epoch / evaluate / main: outputs, recipe details, no leaked global state."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from _tiny_data import make_data  # tests/engine is on sys.path (rootdir-relative import)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnlab.engine.checkpoint import load_checkpoint
from attnlab.engine.config import TrainConfig
from attnlab.engine.recipe import build_optimizer, lr_factor
from attnlab.engine.train import evaluate, main


def _config(tmp_path, **overrides) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 8, "lr": 0.05, "progress": False, "out": str(tmp_path)}
    return TrainConfig(**{**options, **overrides})


def test_main_writes_outputs_and_summary(tmp_path):
    summary = main(_config(tmp_path), datasets=make_data())
    assert summary["epochs"] == 2 and 0 <= summary["val_acc"] <= 1 and summary["params"] > 0
    assert summary["best_val_acc"] >= summary["val_acc"] and summary["epoch_time"] > 0
    assert summary["model_config"]["num_classes"] == 4 and summary["out"] == str(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_acc", "lr", "time"}
    assert rows[-1]["val_acc"] == summary["val_acc"]
    with open(tmp_path / "metrics.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert TrainConfig.from_yaml(tmp_path / "config.yaml") == _config(tmp_path)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["data_info"]["classes"][3] == "c3"
    assert (tmp_path / "best.pt").exists()


def test_no_global_state_leaks(tmp_path):
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    main(_config(tmp_path, epochs=1, deterministic=True, seed=7), datasets=make_data())
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(4), expected)


def test_same_seed_same_result_other_seed_differs(tmp_path):
    runs = [
        main(_config(tmp_path / str(i), epochs=1, seed=seed), datasets=make_data())["val_loss"]
        for i, seed in enumerate((0, 0, 1))
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_recipe_options_run(tmp_path):
    config = _config(
        tmp_path, optimizer="adamw", lr=1e-3, schedule="step", milestones=[1], label_smoothing=0.1,
        grad_clip=1.0, amp="bf16", attn="se", weight_decay=0.05, warmup_epochs=0,
    )  # fmt: skip
    summary = main(config, datasets=make_data())
    assert math.isfinite(summary["val_loss"]) and summary["model_config"]["attn"] == "se"
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 1e-4])


def test_fp16_needs_cuda_and_batch_must_split(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        main(_config(tmp_path, amp="fp16", device="cpu"), datasets=make_data())


def test_lr_schedule_per_iteration():
    config = TrainConfig(epochs=4, warmup_epochs=1, schedule="cosine")
    factors = [lr_factor(step, config, steps_per_epoch=4) for step in range(16)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warm-up per step
    assert factors[4:] == sorted(factors[4:], reverse=True) and factors[-1] < 0.03
    step = TrainConfig(epochs=4, warmup_epochs=0, schedule="step", gamma=0.5)  # 50 %, 75 %: 2, 3
    assert [lr_factor(s, step, 1) for s in range(4)] == [1.0, 1.0, 0.5, 0.25]


def test_no_weight_decay_on_biases_norms_and_gains():
    import attnlab

    model = attnlab.create_model("resnet20", attn="ca", stage_attn="bam", num_classes=3)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(
        p.ndim <= 1 for p in no_decay["params"]
    )
    assert any(names[id(p)].endswith("bn1.weight") for p in no_decay["params"])
    assert any(names[id(p)] == "fc.bias" for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_evaluate_counts_exactly():
    images = torch.eye(4)[[0, 1, 2, 3, 0, 1]]  # one-hot "images" = logits of an identity model
    labels = torch.tensor([0, 1, 2, 0, 0, 0])  # 4 of 6 right
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    result = evaluate(nn.Identity(), loader, "cpu")
    assert result["acc"] == pytest.approx(4 / 6) and result["count"] == 6
    expected = nn.functional.cross_entropy(images, labels).item()
    assert result["loss"] == pytest.approx(expected)


def test_model_options_errors(tmp_path):
    with pytest.raises(ValueError, match="model 'resnet20'"):
        main(_config(tmp_path, model_kwargs={"no_such_option": 1}), datasets=make_data())
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        main(_config(tmp_path, resume=str(tmp_path / "nowhere.pt")), datasets=make_data())


def test_save_every_zero_and_resuming_a_finished_run(tmp_path):
    config = _config(tmp_path / "a", save_every=0)
    first = main(config, datasets=make_data())
    assert load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 2
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 2
    again = _config(tmp_path / "b", resume=str(tmp_path / "a" / "last.pt"))
    summary = main(again, datasets=make_data())
    assert summary["epochs"] == 2 and summary["val_loss"] == pytest.approx(first["val_loss"])
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
