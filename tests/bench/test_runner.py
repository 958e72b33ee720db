"""The bench runner on tiny shapes: rows, ratios, skips, failures, the written report."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from attnlab.bench import bench_models, bench_modules, write_report
from attnlab.bench.papers import PAPER_VARIANTS
from attnlab.bench.report import format_markdown
from attnlab.bench.runner import environment, stage_shapes

TINY = {"batch": 1, "image_size": 32, "repeats": 1, "warmup": 0, "round_seconds": 0.001}


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def modules():
    return bench_modules(["se", "eca", "pam"], **TINY, stages=(1, 2), log=quiet)


@pytest.fixture(scope="module")
def papers(paper_table):
    return paper_table


@pytest.fixture(scope="module")
def models():
    return bench_models("resnet20", ("se", "bam"), **{**TINY, "batch": 2}, log=quiet)


def test_stage_shapes():
    assert stage_shapes(1, 32) == [(1, 256, 8, 8), (1, 512, 4, 4), (1, 1024, 2, 2), (1, 2048, 1, 1)]
    assert stage_shapes(2, 225)[0] == (2, 256, 57, 57)  # the stem rounds up, like ResNet's


def test_module_rows(modules):
    rows = modules["rows"]
    names = ["reference", "se", "eca", "pam"]
    assert [(r["stage"], r["attention"]) for r in rows] == [(s, n) for s in (1, 2) for n in names]
    for row in rows:
        assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0 and row["peak_fwd_mib"] > 0
        assert row["peak_fwdbwd_mib"] >= row["peak_fwd_mib"]
        if row["attention"] == "reference":
            assert row["fwd_ratio"] == row["fwdbwd_ratio"] == 1.0
            # x.clone() allocates exactly one copy of x (float32).
            assert row["peak_fwd_mib"] * 2**20 == 4 * math.prod(row["shape"])
        else:
            assert row["params"] > 0 and row["flops"] >= 2 * row["macs"] > 0
    pam = [r for r in rows if r["attention"] == "pam"]
    assert all(r["note"] == "plain N×N formulation" for r in pam)


def test_skips_and_failures_are_rows_not_crashes():
    result = bench_modules(["cam", "bam"], **TINY, max_gib=0.01, stages=(1, 4), log=quiet)
    notes = {(r["stage"], r["attention"]): r["note"] for r in result["rows"]}
    assert notes[(4, "cam")].startswith("skipped: needs ~")  # 2048² affinities per image
    # BAM's channel branch BatchNorm cannot train on one value per channel (batch 1): that
    # measurement is dropped and said, the others go on.
    assert "forward+backward failed" in notes[(1, "bam")]
    bam = next(r for r in result["rows"] if r["attention"] == "bam")
    assert bam["fwd_ms"] > 0 and "fwdbwd_ms" not in bam


def test_model_rows(models):
    rows = {r["variant"]: r for r in models["rows"]}
    assert list(rows) == ["baseline", "se", "bam"]
    assert rows["bam"]["options"] == {"stage_attn": "bam"} and rows["se"]["options"] == {
        "attn": "se"
    }
    assert rows["baseline"]["infer_ratio"] == rows["baseline"]["train_ratio"] == 1.0
    assert rows["se"]["params"] > rows["baseline"]["params"]
    assert rows["se"]["macs"] > rows["baseline"]["macs"]
    for row in rows.values():
        assert row["infer_ms"] > 0 and row["train_ms"] > 0
        assert row["peak_train_mib"] > row["peak_infer_mib"] > 0


def test_paper_table(papers):
    # The default models, each with every variant; torchvision's ResNet-101 has 44,549,160.
    count = len(PAPER_VARIANTS)
    assert [r["model"] for r in papers["rows"]] == ["resnet50"] * count + ["resnet101"] * count
    assert papers["rows"][count]["variant"] == "baseline"
    assert papers["rows"][count]["params"] == 44_549_160
    rows = {r["variant"]: r for r in papers["rows"] if r["model"] == "resnet50"}
    assert rows["baseline"]["params"] == 25_557_032
    assert rows["baseline"]["macs"] == 4_089_184_256
    # ECA with its authors' kernels (3, 5, 5, 7): 80 parameters, their 24.37 M in 2^20 units.
    assert rows["eca"]["params"] - rows["baseline"]["params"] == 80
    assert round(rows["eca"]["params_m_binary"], 2) == rows["eca"]["paper_params_m"] == 24.37
    assert rows["cbam"]["paper_params_m"] == round(rows["cbam"]["params"] / 1e6, 2) == 28.09
    assert rows["bam"]["paper_gflops"] is None  # figures not checked stay empty


def test_report_files(tmp_path, modules, models, papers):
    results = {"environment": environment("cpu"), "modules": modules, "models": models}
    results["papers"] = papers
    paths = write_report(results, str(tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data) == {"environment", "modules", "models", "papers"}
    assert data["environment"]["threads"] >= 1 and data["environment"]["torch"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert text == format_markdown(results)
    assert "**MACs** = multiply-accumulates" in text and "**FLOPs** = 2 × MACs" in text
    assert "threads; torch" in text
    assert "| 1 | 256×8×8 | se |" in text and "| bam |" in text and "| resnet50 | eca |" in text
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "out" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert paths["png"] is None
