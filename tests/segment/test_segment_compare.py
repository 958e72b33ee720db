"""``attnlab segment compare``: statistics and table from hand-made runs, argument checks, and
one small end-to-end run through the CLI (slow)."""

from __future__ import annotations

import json
import math

import pytest

from attnlab.cli import main
from attnlab.lab.segment_compare import compare_heads, markdown, summarise

COSTS = {
    h: {"params": 1000 + i, "macs": 2e6, "peak_inference_bytes": 2**20}
    for i, h in enumerate(["fcn", "nl", "ccnet"])
}


def _runs(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"head": h, "seed": s, "miou": v, "pixel_accuracy": 0.5 + v / 2, "train_seconds": 2.0}
        for h, vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_summary_statistics_and_verdicts():
    runs = _runs({"fcn": [0.50, 0.52, 0.51], "nl": [0.60, 0.61, 0.62], "ccnet": [0.40, 0.70, 0.55]})
    rows = summarise(runs, ["fcn", "nl", "ccnet"])
    fcn, nl, cc = rows
    assert fcn["miou"]["mean"] == pytest.approx(0.51) and "miou_vs_fcn" not in fcn
    assert nl["miou_vs_fcn"]["diff"] == pytest.approx(0.10)
    assert nl["miou_vs_fcn"]["distinguishable"] is True
    assert cc["miou_vs_fcn"]["distinguishable"] is False  # spread 0.15 over 3 seeds
    # Welch's interval by hand for nl: both groups have s = 0.01, n = 3.
    se = math.sqrt(0.01**2 / 3 + 0.01**2 / 3)
    half = 2.7764451051977987 * se  # t_{0.975, 4} (Welch df = 4 for equal variances)
    assert nl["miou_vs_fcn"]["lo"] == pytest.approx(0.10 - half, rel=1e-6)
    text = markdown(rows, COSTS, {"image_size": 32})
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.count("|") > 6}
    assert "better than FCN" in lines["nl"]
    assert "not distinguishable from noise" in lines["ccnet"]
    assert "baseline" in lines["fcn"]
    assert "| ccnet | 1,002 | 2.0 M | 2.0 | 1.0 MiB |" in text


def test_one_seed_says_so():
    rows = summarise(_runs({"fcn": [0.5], "nl": [0.6]}), ["fcn", "nl"])
    text = markdown(rows, COSTS, {"image_size": 32})
    assert "n/a (1 seed)" in text and "needs ≥ 2 seeds" in text


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"heads": ["nl", "nl"]}, "distinct"),
        ({"heads": ["aspp"]}, "aspp_resnet20"),
        ({"seeds": []}, "seeds"),
        ({"jobs": 0}, "jobs must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, needle):
    heads = kwargs.pop("heads", ["nl"])
    with pytest.raises(ValueError, match=needle):
        compare_heads(heads, out=str(tmp_path), log=None, **kwargs)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_quick_compare_through_the_cli(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["segment", "compare", "--quick", "--heads", "ccnet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ccnet |" in printed and "| fcn |" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["head"] for r in result["rows"]] == ["fcn", "ccnet"]
    assert sorted((r["head"], r["seed"]) for r in result["runs"]) == [
        ("ccnet", 0), ("ccnet", 1), ("fcn", 0), ("fcn", 1),
    ]  # fmt: skip
    for run in result["runs"]:
        assert 0.0 <= run["miou"] <= 1.0 and 0.0 <= run["pixel_accuracy"] <= 1.0
    ccnet = result["rows"][1]
    assert set(ccnet["miou_vs_fcn"]) == {"diff", "lo", "hi", "distinguishable"}
    assert result["costs"]["ccnet"]["params"] > result["costs"]["fcn"]["params"]
    assert (out / "results.md").read_text().startswith("# Segmentation heads compared")
