"""Confidence intervals on hand-made cases (attnlab.metrics.stats)."""

import math
import random

import pytest

from attnlab.metrics.stats import diff_ci, mean_ci, t_cdf, t_quantile

# Two-sided 95 % Student-t quantiles from printed tables (4 decimals).
TABLE_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 10: 2.2281, 30: 2.0423}


@pytest.mark.parametrize("df,expected", sorted(TABLE_975.items()))
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_quantile_tends_to_normal_and_inverts_cdf():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    # df = 1 is the Cauchy distribution: CDF = 1/2 + atan(t)/pi.
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1.0) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    for p in (0.6, 0.9, 0.995):
        assert t_cdf(t_quantile(p, 4.5), 4.5) == pytest.approx(p, abs=1e-10)


def test_mean_ci_interval_width_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # s = 1, n = 3: half width = t(0.975, 2) / sqrt(3).
    half = 4.302653 / math.sqrt(3.0)
    assert (ci["mean"], ci["std"], ci["n"]) == (2.0, 1.0, 3)
    assert ci["lo"] == pytest.approx(2.0 - half, abs=1e-5)
    assert ci["hi"] == pytest.approx(2.0 + half, abs=1e-5)
    # A lower confidence gives a narrower interval.
    ci80 = mean_ci([1.0, 2.0, 3.0], confidence=0.8)
    assert ci80["hi"] - ci80["lo"] < ci["hi"] - ci["lo"]


def test_mean_ci_single_value_has_no_interval():
    ci = mean_ci([5.0])
    assert ci["mean"] == 5.0 and ci["n"] == 1
    assert math.isnan(ci["std"]) and math.isnan(ci["lo"]) and math.isnan(ci["hi"])


def test_mean_ci_covers_true_mean_about_95_percent():
    rng = random.Random(0)
    trials, hits = 2000, 0
    for _ in range(trials):
        ci = mean_ci([rng.gauss(10.0, 3.0) for _ in range(4)])
        hits += ci["lo"] <= 10.0 <= ci["hi"]
    # Binomial(2000, 0.95) has a standard deviation of about 0.5 %.
    assert 0.93 < hits / trials < 0.97


def test_diff_ci_known_significant():
    d = diff_ci([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    # Equal variances and sizes: Welch's df = 4, se = sqrt(2/3).
    half = 2.776445 * math.sqrt(2.0 / 3.0)
    assert d["diff"] == 9.0
    assert d["lo"] == pytest.approx(9.0 - half, abs=1e-5)
    assert d["hi"] == pytest.approx(9.0 + half, abs=1e-5)
    assert d["distinguishable"] is True
    assert diff_ci([1.0, 2.0, 3.0], [10.0, 11.0, 12.0])["distinguishable"] is True


def test_diff_ci_known_null():
    d = diff_ci([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert d["diff"] == -0.5
    assert d["lo"] < 0.0 < d["hi"]
    assert d["distinguishable"] is False


def test_diff_ci_welch_degrees_of_freedom_by_hand():
    x, y = [1.0, 2.0, 3.0], [10.0, 12.0, 14.0, 16.0]
    # var(x) = 1, var(y) = 20/3; a = 1/3, b = 5/3; df = (a+b)^2 / (a^2/2 + b^2/3).
    a, b = 1.0 / 3.0, 5.0 / 3.0
    df = (a + b) ** 2 / (a * a / 2.0 + b * b / 3.0)
    assert 4.0 < df < 4.2
    d = diff_ci(x, y)
    half = t_quantile(0.975, df) * math.sqrt(a + b)
    assert d["diff"] == -11.0
    assert d["hi"] - d["lo"] == pytest.approx(2.0 * half, rel=1e-9)
    assert d["distinguishable"] is True


def test_diff_ci_degenerate_groups():
    assert diff_ci([1.0], [1.0, 2.0])["distinguishable"] is False
    assert math.isnan(diff_ci([1.0], [1.0, 2.0])["lo"])
    flat = diff_ci([2.0, 2.0], [1.0, 1.0])
    assert (flat["lo"], flat["hi"], flat["distinguishable"]) == (1.0, 1.0, True)
    assert diff_ci([1.0, 1.0], [1.0, 1.0])["distinguishable"] is False


@pytest.mark.parametrize(
    "call,exc",
    [
        (lambda: mean_ci([]), ValueError),
        (lambda: mean_ci([1.0, math.nan]), ValueError),
        (lambda: mean_ci([1.0, 2.0], confidence=1.5), ValueError),
        (lambda: mean_ci("abc"), TypeError),
        (lambda: mean_ci([1.0, "x"]), TypeError),
        (lambda: diff_ci([1.0, 2.0], []), ValueError),
        (lambda: t_quantile(1.0, 3), ValueError),
        (lambda: t_cdf(0.0, 0), ValueError),
    ],
)
def test_bad_input(call, exc):
    with pytest.raises(exc, match="stats"):
        call()
