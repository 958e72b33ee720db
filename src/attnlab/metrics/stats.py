"""Confidence intervals for results over seeds: a mean's Student-t interval and the Welch-t
interval of a difference of two means.

Repeated runs of a training recipe differ by seed; a table of means says nothing without the
spread. Two functions turn a handful of per-seed results into intervals:

- :func:`mean_ci`: mean, sample standard deviation (ddof = 1) and the Student-t interval
  ``mean ± t_{1-α/2, n-1} · s / √n``;
- :func:`diff_ci`: the difference of two means (``values - baseline``) with Welch's interval,
  ``d ± t_{1-α/2, ν} · √(s₁²/n₁ + s₂²/n₂)``, ν from the Welch–Satterthwaite equation
  (Welch, "The generalization of Student's problem when several different population
  variances are involved", Biometrika 1947). ``distinguishable`` is True when the interval
  excludes 0 — at 95 %, the two-sided Welch test at the 5 % level.

Student-t quantiles are computed here (regularised incomplete beta function by its continued
fraction, inverted by bisection), so the module needs only the standard library.

With fewer than two values a standard deviation and interval do not exist: they are NaN, and a
difference involving such a group is never ``distinguishable``.

Example:
    >>> from attnlab.metrics.stats import diff_ci, mean_ci, t_quantile
    >>> ci = mean_ci([1.0, 2.0, 3.0])
    >>> ci["mean"], ci["std"], round(ci["lo"], 3), round(ci["hi"], 3), ci["n"]
    (2.0, 1.0, -0.484, 4.484, 3)
    >>> diff_ci([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])["distinguishable"]
    True
    >>> round(t_quantile(0.975, 10), 4)
    2.2281
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

__all__ = ["diff_ci", "mean_ci", "t_cdf", "t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        # Even step of the fraction.
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # Odd step.
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Cumulative distribution function of Student's t.

    Args:
        t: The point.
        df: Degrees of freedom (> 0; need not be an integer, as in Welch's ν).

    Returns:
        P(T <= t).
    """
    if not df > 0:
        raise ValueError(f"stats.t_cdf: expected degrees of freedom > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t, by bisection on :func:`t_cdf`.

    Args:
        p: Probability, 0 < p < 1.
        df: Degrees of freedom (> 0).

    Returns:
        t with P(T <= t) = p, to about 1e-12.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"stats.t_quantile: expected 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"stats.t_quantile: expected degrees of freedom > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _check(values: Sequence[float], name: str, confidence: float) -> list[float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"stats.{name}: expected 0 < confidence < 1, got {confidence}")
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"stats.{name}: expected a sequence of numbers, got {type(values).__name__}"
        )
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"stats.{name}: expected a sequence of numbers, got {values!r}") from err
    if not out:
        raise ValueError(f"stats.{name}: expected at least one value, got none")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"stats.{name}: expected finite values, got {out}")
    return out


def _mean_var(x: list[float]) -> tuple[float, float]:
    mean = math.fsum(x) / len(x)
    if len(x) < 2:
        return mean, math.nan
    return mean, math.fsum((v - mean) ** 2 for v in x) / (len(x) - 1)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean with its Student-t confidence interval.

    Args:
        values: One result per seed.
        confidence: Two-sided confidence level.

    Returns:
        ``{"mean", "std", "lo", "hi", "n"}``; ``std`` is the sample standard deviation
        (ddof = 1); ``std``, ``lo`` and ``hi`` are NaN for a single value.
    """
    x = _check(values, "mean_ci", confidence)
    mean, var = _mean_var(x)
    n = len(x)
    if n < 2:
        return {"mean": mean, "std": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
    return {"mean": mean, "std": math.sqrt(var), "lo": mean - half, "hi": mean + half, "n": n}


def diff_ci(
    values: Sequence[float], baseline_values: Sequence[float], confidence: float = 0.95
) -> dict:
    """Difference of means ``mean(values) - mean(baseline_values)`` with Welch's interval.

    Args:
        values: One result per seed of the variant.
        baseline_values: One result per seed of the baseline (seeds need not be paired).
        confidence: Two-sided confidence level.

    Returns:
        ``{"diff", "lo", "hi", "distinguishable"}``; ``distinguishable`` is True when the
        interval excludes 0. With fewer than two values in either group ``lo``/``hi`` are NaN
        and ``distinguishable`` is False. When both groups have zero spread the interval is
        the single point ``diff``.
    """
    x = _check(values, "diff_ci", confidence)
    y = _check(baseline_values, "diff_ci", confidence)
    (mx, vx), (my, vy) = _mean_var(x), _mean_var(y)
    diff = mx - my
    if len(x) < 2 or len(y) < 2:
        return {"diff": diff, "lo": math.nan, "hi": math.nan, "distinguishable": False}
    ax, ay = vx / len(x), vy / len(y)
    se2 = ax + ay
    if se2 == 0.0:
        return {"diff": diff, "lo": diff, "hi": diff, "distinguishable": diff != 0.0}
    # Welch–Satterthwaite degrees of freedom.
    df = se2 * se2 / (ax * ax / (len(x) - 1) + ay * ay / (len(y) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    lo, hi = diff - half, diff + half
    return {"diff": diff, "lo": lo, "hi": hi, "distinguishable": bool(lo > 0.0 or hi < 0.0)}
