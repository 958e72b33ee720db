"""benchmarks/gate_stages.py on one small stage: the fused call runs (with --norm, the norm in
the gate's own call) and the row has its figures (the script itself times for minutes)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from attnlab.layers import fused

_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(_DIR))  # (the script imports gate_overhead, as run from there)
    try:
        spec = importlib.util.spec_from_file_location("gate_stages_script", _DIR / "gate_stages.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_DIR))
    return module


@pytest.mark.skipif(not fused.available(), reason="fused kernels unavailable")
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("name", ["se", "cbam"])
def test_stage_row_times_the_fused_call(script, name, norm):
    row = script.stage_row(name, 4, batch=2, rounds=2, number=1, norm=norm)
    assert row["shape"] == (2, 2048, 5, 5)
    for key in ("gate", "tail", "clone"):
        assert row[key] > 0
    assert math.isfinite(row["gate_minus_tail"])


@pytest.mark.skipif(not fused.available(), reason="fused kernels unavailable")
def test_stage_row_refuses_a_norm_the_call_does_not_run(script, monkeypatch):
    # ties forced dense: CBAM's call runs its norm as a module, which --norm must not time
    monkeypatch.setenv("ATTNLAB_DENSE_TIES", "1")
    with pytest.raises(SystemExit, match="did not run the norm"):
        script.stage_row("cbam", 4, batch=2, rounds=1, number=1, norm=True)
