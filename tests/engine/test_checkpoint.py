"""Checkpoints: atomic writes, weights_only loading, config differences, RNG state round trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import attnlab
from attnlab.engine.checkpoint import (
    check_model_config,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_save_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(2)})
    assert load_checkpoint(path)["epoch"] == 1

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path / "sub") == ["last.pt"]  # no temporary left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)


class Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)  # one line for the CLI, not torch's advice page


def test_config_difference_lists_the_keys(tmp_path):
    se = attnlab.create_model("resnet20", attn="se", num_classes=4)
    path = tmp_path / "se.pt"
    save_checkpoint(path, {"model": se.state_dict(), "model_config": se.config})
    model, _ = load_model(path)
    assert model.config == se.config and not model.training
    cbam = attnlab.create_model("resnet20", attn="cbam", num_classes=5)
    with pytest.raises(
        ValueError, match=r"differing keys: attn: 'se'.*'cbam' here; num_classes: 4"
    ):
        check_model_config(cbam, load_checkpoint(path), str(path))


def test_rng_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state(generator)})
    expected = (
        torch.rand(3),
        np.random.rand(3),
        random.random(),
        torch.rand(2, generator=generator),
    )
    torch.manual_seed(9)
    np.random.seed(9)
    set_rng_state(load_checkpoint(path)["rng"], generator)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])
