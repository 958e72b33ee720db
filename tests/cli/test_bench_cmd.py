"""`attnlab bench`: end to end on tiny shapes, --help, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

import attnlab
from attnlab.bench import count_params, papers
from attnlab.cli import main


def test_bench_quick_end_to_end(tmp_path, capsys, monkeypatch, paper_table):
    # The papers' table is the same whatever the flags (it takes none): the session's copy of
    # it stands in for a second count of its networks (tests/bench/test_runner.py checks it).
    monkeypatch.setattr(papers, "paper_macs_table", lambda: paper_table)
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--attn", "se", "--model", "resnet20", "--stages", "1", "2"]
    assert main([*argv, "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"environment", "settings", "modules", "models", "papers"}
    assert results["environment"]["threads"] == 1
    assert results["settings"]["quick"] and results["settings"]["batch"] == 2
    modules = results["modules"]["rows"]
    assert [(r["stage"], r["attention"]) for r in modules] == [
        (1, "reference"), (1, "se"), (2, "reference"), (2, "se")
    ]  # fmt: skip
    assert [r["variant"] for r in results["models"]["rows"]] == ["baseline", "se"]
    assert {r["model"] for r in results["papers"]["rows"]} == {"resnet50", "resnet101"}
    printed = capsys.readouterr()
    table = (out / "results.md").read_text()
    se_params = count_params(attnlab.create_model("resnet20", attn="se"))
    assert "| 1 | 256×16×16 | se |" in table and f"| se | {se_params:,} |" in table
    assert table.strip() in printed.out and "results in" in printed.err
    assert (out / "results.png").exists()


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--attn", "--batch", "--image-size", "--device", "--threads",
                 "--repeats", "--quick", "--out", "modules,models,papers,all"):  # fmt: skip
        assert flag in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "models", "--attn", "se", "nope"], "unknown attention nope; valid: "),
        (["bench", "--batch", "0"], "--batch must be >= 1, got 0"),
        (["bench", "--threads", "0"], "--threads must be >= 1"),
        pytest.param(
            ["bench", "--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_bench_bad_input(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnlab: error: ") and needle in err[0]
    assert not (tmp_path / "never").exists()
