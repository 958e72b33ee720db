"""TrainConfig: defaults, coercion from strings and YAML, errors naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from attnlab.engine.config import TrainConfig


def test_defaults_and_round_trip(tmp_path):
    config = TrainConfig()
    assert (config.model, config.attn, config.optimizer, config.schedule) == (
        "resnet20", None, "sgd", "cosine",
    )  # fmt: skip
    path = tmp_path / "config.yaml"
    TrainConfig(attn="se", milestones=[3, 6], attn_kwargs={"rd_ratio": 0.25}).save(path)
    again = TrainConfig.from_yaml(path)
    assert again == TrainConfig(attn="se", milestones=[3, 6], attn_kwargs={"rd_ratio": 0.25})
    assert yaml.safe_load(path.read_text())["milestones"] == [3, 6]


def test_strings_are_parsed_like_the_command_line():
    config = TrainConfig.from_dict(
        {"epochs": "3", "lr": "0.05", "grad_clip": "none", "deterministic": "true",
         "attn": "none", "attn_kwargs": "{rd_ratio: 0.125}", "milestones": "2, 3",
         "image_size": "64", "warmup_epochs": "0.5"}
    )  # fmt: skip
    assert (config.epochs, config.lr, config.grad_clip, config.deterministic) == (
        3,
        0.05,
        None,
        True,
    )
    assert config.attn is None and config.attn_kwargs == {"rd_ratio": 0.125}
    assert config.milestones == [2, 3] and config.image_size == 64 and config.warmup_epochs == 0.5


@pytest.mark.parametrize(
    "values, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"lr": -1}, "lr"),
        ({"attn": "nope"}, "attn"),
        ({"stage_attn": "nope"}, "stage_attn"),
        ({"model": "resnet7"}, "model"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"amp": "fp8"}, "amp"),
        ({"data": "imagenet"}, "data"),
        ({"data": "cifar10"}, "data_dir"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"milestones": [5, 2]}, "milestones"),
        ({"attn_kwargs": "[1, 2]"}, "attn_kwargs"),
        ({"device": "gpu"}, "device"),
        ({"deterministic": "maybe"}, "deterministic"),
        ({"grad_clip": 0}, "grad_clip"),
    ],
)
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}:"):
        TrainConfig.from_dict(values)


def test_unknown_keys_name_them_and_the_file(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nwarmup: 1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*warmup"):
        TrainConfig.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_yaml(path)


def test_from_args_yaml_then_flags(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("epochs: 7\nlr: 0.2\nattn: cbam\n")
    config = TrainConfig.from_args({"config": str(path), "lr": "0.3", "command": "train"})
    assert (config.epochs, config.lr, config.attn) == (7, 0.3, "cbam")


def test_every_field_has_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
