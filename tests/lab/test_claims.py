"""The claims an ``attnlab compare`` run checks: which apply, and the verdict rules."""

from __future__ import annotations

import pytest

from attnlab.lab.compare.claims import EQUIVALENCE, check_claims, claims_table
from attnlab.metrics.stats import diff_ci


def _rows(**accs):
    return [{"variant": name.replace("_", " "), "accs": values} for name, values in accs.items()]


def _verdicts(rows):
    return {c["claim"]: c["verdict"] for c in check_claims(rows)}


def test_only_claims_whose_variants_ran():
    assert check_claims(_rows(baseline=[0.7, 0.71, 0.72], se=[0.7, 0.7, 0.71])) == []
    claims = check_claims(_rows(baseline=[0.7, 0.71, 0.72], bam=[0.8, 0.81, 0.82]))
    assert [c["claim"] for c in claims] == ["BAM between stages helps"]
    assert (claims[0]["a"], claims[0]["b"]) == ("bam", "baseline")


def test_better_claims_follow_the_interval():
    rows = [
        {"variant": "cbam k=7", "accs": [0.80, 0.81, 0.82]},
        {"variant": "cbam k=3", "accs": [0.70, 0.71, 0.72]},  # clearly worse: supported
        {"variant": "cbam parallel", "accs": [0.90, 0.91, 0.92]},  # clearly better: not
        {"variant": "cbam pool avg", "accs": [0.75, 0.81, 0.87]},  # overlapping: undecided
    ]
    verdicts = _verdicts(rows)
    assert verdicts["spatial kernel k = 7 beats k = 3"] == "supported"
    assert verdicts["channel→spatial beats parallel"] == "not supported"
    assert verdicts["avg + max channel pooling beats avg alone"] == (
        "not distinguishable at this scale"
    )
    claim = next(c for c in check_claims(rows) if c["b"] == "cbam k=3")
    assert claim["diff"] == diff_ci([0.80, 0.81, 0.82], [0.70, 0.71, 0.72])


@pytest.mark.parametrize(
    ("se", "verdict"),
    [
        ([0.800, 0.801, 0.802], "supported"),  # interval well inside ±2 points
        ([0.70, 0.71, 0.72], "not supported"),  # a clear difference
        ([0.72, 0.80, 0.88], "not distinguishable at this scale"),  # too wide to tell
    ],
)
def test_equal_claim_needs_the_interval_inside_the_margin(se, verdict):
    rows = _rows(cbam=[0.800, 0.802, 0.801], se=se)
    claim = next(c for c in check_claims(rows) if c["claim"] == "in a shallow network CBAM ≈ SE")
    assert claim["verdict"] == verdict
    if verdict == "supported":
        assert -EQUIVALENCE <= claim["diff"]["lo"] <= claim["diff"]["hi"] <= EQUIVALENCE


def test_one_seed_cannot_decide():
    assert _verdicts(_rows(baseline=[0.7], bam=[0.9])) == {
        "BAM between stages helps": "needs ≥ 2 seeds"
    }


@pytest.mark.parametrize(
    ("epoch", "latency", "verdict"),
    [(1.5, 3.0, "supported"), (1.05, 1.0, "not supported"), (1.5, 1.0, "mixed")],
)
def test_cost_claim_compares_time_with_macs(epoch, latency, verdict):
    base = {"variant": "baseline", "accs": [0.7, 0.7], "macs": 100, "epoch_time": 2.0,
            "latency_ms": 4.0}  # fmt: skip
    cbam = {"variant": "cbam", "accs": [0.7, 0.7], "macs": 101, "epoch_time": 2.0 * epoch,
            "latency_ms": 4.0 * latency}  # fmt: skip
    claim = check_claims([base, cbam])[0]
    assert claim["claim"] == "CBAM costs more time than its FLOPs say"
    assert claim["verdict"] == verdict
    assert claim["cost"]["macs_ratio"] == pytest.approx(1.01)
    assert claim["cost"]["epoch_ratio"] == pytest.approx(epoch)


def test_table_has_one_row_per_claim():
    claims = check_claims(_rows(baseline=[0.7, 0.71, 0.72], bam=[0.8, 0.81, 0.82]))
    table = claims_table(claims).splitlines()
    assert len(table) == 2 + len(claims)
    assert "| BAM between stages helps | BAM paper | bam vs baseline |" in table[2]
    assert table[2].endswith("| supported |")
