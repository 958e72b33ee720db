"""benchmarks/gate_overhead.py's accounting of a training step's phases (the script itself
times networks for minutes; here only its arithmetic, on given times)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gate_overhead.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gate_overhead_script", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phase_split_pairs_turns_and_drops_warmup(script):
    # Two warm-up calls (huge, must be left out), then three turns. The attention side's
    # forward is 2 ms slower in every turn, its backward 1 ms slower in two turns of three and
    # its optimizer step the same; the base step's median is 10 ms.
    base = [(9.0, 9.0, 9.0)] * 2 + [(0.003, 0.006, 0.001), (0.004, 0.005, 0.001),
                                    (0.002, 0.007, 0.001)]  # fmt: skip
    attn = [(9.0, 9.0, 9.0)] * 2 + [(0.005, 0.007, 0.001), (0.006, 0.006, 0.001),
                                    (0.004, 0.007, 0.001)]  # fmt: skip
    out = script.phase_split(base, attn)
    assert list(out) == ["forward", "backward", "optimizer"]
    assert out["forward"]["base_s"] == pytest.approx(0.003)
    assert out["forward"]["attn_s"] == pytest.approx(0.005)
    assert out["forward"]["diff_s"] == pytest.approx(0.002)
    assert out["forward"]["diff_share"] == pytest.approx(0.2)
    assert out["backward"]["diff_s"] == pytest.approx(0.001)
    assert out["backward"]["diff_share"] == pytest.approx(0.1)
    assert out["optimizer"]["diff_s"] == pytest.approx(0.0)


def test_phase_split_difference_is_per_turn_not_of_medians(script):
    # The turns' differences are 1, 1 and 5 ms (median 1 ms); the sides' medians, 3 and 6 ms,
    # differ by 3 ms: a burst of load in one turn moves the medians, not the paired figure.
    base = [(0, 0, 0)] * 2 + [(0.001, 0, 0), (0.005, 0, 0), (0.003, 0, 0)]
    attn = [(0, 0, 0)] * 2 + [(0.002, 0, 0), (0.006, 0, 0), (0.008, 0, 0)]
    out = script.phase_split(base, attn)["forward"]
    assert out["attn_s"] - out["base_s"] == pytest.approx(0.003)
    assert out["diff_s"] == pytest.approx(0.001)


def test_phase_split_rejects_unpaired_calls(script):
    with pytest.raises(ValueError, match="2 base and 1 attention"):
        script.phase_split([(1, 1, 1)] * 4, [(1, 1, 1)] * 3)
    with pytest.raises(ValueError, match="0 base"):
        script.phase_split([(1, 1, 1)] * 2, [(1, 1, 1)] * 2)


def test_interleaved_waits_for_the_device_around_each_call(script):
    # --device cuda passes torch.cuda.synchronize: a call's time must include the work it
    # queued, so the wait comes before the clock starts and before it stops, every call.
    events = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    out = script.interleaved(fns, rounds=2, number=3, block=True, sync=lambda: events.append("|"))
    calls = 2 * (2 + 2 * 3)  # warm-up (2 calls each, no wait needed) + the timed calls
    assert events.count("a") + events.count("b") == calls
    timed = "".join(events[4:])  # after the warm-up
    assert timed == "|a|" * 3 + "|b|" * 3 + "|a|" * 3 + "|b|" * 3
    assert set(out) >= {"a", "b", "a/", "b/", "a/iqr", "b/iqr"}
