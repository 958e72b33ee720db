"""benchmarks/gate_overhead.py's turn-by-turn timing (the script itself times networks for
minutes; here only its bookkeeping, on a fake clock)."""

import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("gate_overhead")


class FakeClock:
    """perf_counter that advances only when a candidate runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_waits_for_the_device_around_each_call(script):
    # --device cuda passes torch.cuda.synchronize: a call's time must include the work it
    # queued, so the wait comes before the clock starts and before it stops, every call.
    events = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    script.interleaved(fns, turns=3, sync=lambda: events.append("|"))
    assert "".join(events[:4]) == "aabb"  # two warm-up calls each, not timed
    assert "".join(events[4:]) == "|a||b|" * 3


def test_interleaved_ratios_are_per_turn_against_the_first(script, monkeypatch):
    # b takes 2, 2 and 12 units in its three turns, a takes 1 each time: the per-turn ratios
    # are 2, 2 and 12 (median 2), while the ratio of the medians would also be 2 but a burst
    # in one turn must not move the median ratio.
    clock = FakeClock()
    monkeypatch.setattr(script.time, "perf_counter", clock)
    costs = {"a": iter([0, 0] + [1, 1, 1]), "b": iter([0, 0] + [2, 2, 12])}

    def run(name):
        def fn():
            clock.now += next(costs[name])

        return fn

    times = script.interleaved({"a": run("a"), "b": run("b")}, turns=3, sync=lambda: None)
    assert times == {"a": [1, 1, 1], "b": [2, 2, 12]}  # turn by turn, warm-up calls left out
    out = script.paired(times["b"], times["a"])
    assert out["s"] == pytest.approx(2)
    assert out["ratio"] == pytest.approx(2)
    low, high = out["iqr"]
    assert low <= 2 <= high
    assert script.paired(times["a"], times["a"])["ratio"] == pytest.approx(1)
