"""The `attnlab` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import attnlab
from attnlab.cli import main


def test_list_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in attnlab.list_attention():
        assert f"\n{name} " in out
    assert "1807.06521" in out and "Squeeze-and-Excitation" in out


def test_list_json_and_kind(capsys):
    assert main(["list", "--json", "--kind", "channel"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["eca", "ese", "fca", "se", "sk", "srm"]
    assert {"class", "paper", "arxiv", "year", "kind"} <= set(rows[0])


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: attnlab" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "attnlab", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == f"attnlab {attnlab.__version__}"
