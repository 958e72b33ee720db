"""Every numeric setting of every task's config is checked: NaN and infinities are refused with
the config and field named; the shared parser reads lists, booleans and "none"."""

from __future__ import annotations

import pytest

from attnlab.engine.config import TrainConfig
from attnlab.engine.runconfig import coerce
from attnlab.engine.tasks.detect_config import DetectConfig
from attnlab.engine.tasks.segment_config import SegmentConfig

BAD_NUMBERS = ("nan", "inf", "-inf", float("nan"), float("inf"))


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize(
    ("config_class", "name"),
    [
        (TrainConfig, "lr"),
        (TrainConfig, "weight_decay"),
        (TrainConfig, "grad_clip"),
        (TrainConfig, "warmup_epochs"),
        (TrainConfig, "momentum"),
        (TrainConfig, "gamma"),
        (DetectConfig, "lr"),
        (DetectConfig, "grad_clip"),
        (DetectConfig, "conf_threshold"),
        (DetectConfig, "warmup_epochs"),
        (SegmentConfig, "lr"),
        (SegmentConfig, "poly_power"),
        (SegmentConfig, "jitter"),
        (SegmentConfig, "loss_pam"),
    ],
)
def test_non_finite_numbers_are_refused(config_class, name, value):
    with pytest.raises(ValueError, match=rf"^{config_class.__name__}\.{name}: must be a finite"):
        config_class.from_dict({name: value})


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_list_items_are_refused(value):
    with pytest.raises(ValueError, match=r"SegmentConfig\.scales: must be a finite"):
        SegmentConfig(scales=f"0.5,{value}")
    with pytest.raises(ValueError, match=r"SegmentConfig\.scale: must be a finite"):
        SegmentConfig(scale=[0.5, value])


def test_integers_refuse_infinity_and_fractions():
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs: expected int, got 'inf'"):
        TrainConfig(epochs="inf")
    with pytest.raises(ValueError, match=r"DetectConfig\.batch_size: expected int, got 2\.5"):
        DetectConfig(batch_size=2.5)


def test_the_shared_parser():
    assert coerce("C", "m", ["30", "60"], list[int]) == [30, 60]
    assert coerce("C", "s", "0.5 2", list[float]) == [0.5, 2.0]
    assert coerce("C", "g", "none", float | None) is None
    assert coerce("C", "b", "off", bool) is False
    assert coerce("C", "d", "{a: 1}", dict) == {"a": 1}
    with pytest.raises(ValueError, match=r"C\.b: expected bool, got 'maybe'"):
        coerce("C", "b", "maybe", bool)


@pytest.mark.parametrize("config_class", [TrainConfig, DetectConfig, SegmentConfig])
def test_run_options_are_shared_and_checked(config_class):
    config = config_class(overwrite="yes", allow_changes=True)
    assert config.overwrite is True and config.allow_changes is True
    with pytest.raises(ValueError, match=rf"{config_class.__name__}\.workers: must be >= 0"):
        config_class(workers=-1)
    with pytest.raises(ValueError, match=rf"{config_class.__name__}\.save_every: must be >= 0"):
        config_class(save_every=-2)
