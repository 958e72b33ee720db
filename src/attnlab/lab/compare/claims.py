"""The papers' claims that an ``attnlab compare`` run can check, and their verdicts.

A claim compares two variants of the run (by name; a claim whose variants are not both in the
run is skipped):

- ``"better"``: A beats B. *supported* when Welch's 95 % interval of mean(A) − mean(B) lies
  above 0, *not supported* when it lies below 0, *not distinguishable at this scale* when it
  contains 0.
- ``"equal"``: A ≈ B. *supported* when the whole interval lies within ±:data:`EQUIVALENCE`
  (2 points of accuracy), *not supported* when it excludes 0, otherwise *not distinguishable
  at this scale* (the run can neither confirm nor refute it).
- ``"slower"``: A costs more time than its MACs say. *supported* when both A's mean training
  epoch time and its batch-1 latency, relative to B's, exceed its MACs relative to B's by more
  than :data:`COST_MARGIN` (10 %); *not supported* when neither does; otherwise *mixed*.
  Epoch times of parallel runs share the cores, so this is one run's reading, without an
  interval.

Example:
    >>> rows = [{"variant": "baseline", "accs": [0.70, 0.72, 0.71]},
    ...         {"variant": "bam", "accs": [0.75, 0.76, 0.77]}]
    >>> [(c["claim"], c["verdict"]) for c in check_claims(rows)]
    [('BAM between stages helps', 'supported')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...metrics.stats import diff_ci

EQUIVALENCE = 0.02  # accuracy; "A ≈ B" needs the whole 95 % interval within ± this
COST_MARGIN = 0.10  # "slower than its MACs say": time ratio above MACs ratio by > 10 %


@dataclass(frozen=True)
class Claim:
    """One claim: ``a`` relates to ``b`` as ``kind`` says; names list accepted variant names."""

    text: str
    source: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    kind: str  # "better", "equal" or "slower"


CBAM = ("cbam", "cbam k=7")
CLAIMS: tuple[Claim, ...] = (
    Claim("spatial kernel k = 7 beats k = 3", "CBAM paper, Table 2", CBAM, ("cbam k=3",), "better"),
    Claim(
        "channel→spatial beats spatial→channel",
        "CBAM paper, Table 3",
        CBAM,
        ("cbam spatial→channel",),
        "better",
    ),  # fmt: skip
    Claim(
        "channel→spatial beats parallel", "CBAM paper, Table 3", CBAM, ("cbam parallel",), "better"
    ),
    Claim(
        "avg + max channel pooling beats avg alone",
        "CBAM paper, Table 1",
        CBAM,
        ("cbam pool avg",),
        "better",
    ),  # fmt: skip
    Claim(
        "avg + max channel pooling beats max alone",
        "CBAM paper, Table 1",
        CBAM,
        ("cbam pool max",),
        "better",
    ),  # fmt: skip
    Claim("in a shallow network CBAM ≈ SE", "users' reports", CBAM, ("se",), "equal"),
    Claim("BAM between stages helps", "BAM paper", ("bam",), ("baseline",), "better"),
    Claim(
        "CBAM costs more time than its FLOPs say", "users' reports", CBAM, ("baseline",), "slower"
    ),  # fmt: skip
)


def _find(rows: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any] | None:
    return next((rows[n] for n in names if n in rows), None)


def _accuracy_verdict(kind: str, diff: dict[str, Any]) -> str:
    lo, hi = diff["lo"], diff["hi"]
    if lo != lo:  # NaN: fewer than two seeds
        return "needs ≥ 2 seeds"
    if kind == "equal":
        if lo >= -EQUIVALENCE and hi <= EQUIVALENCE:
            return "supported"
        return "not supported" if diff["distinguishable"] else "not distinguishable at this scale"
    if lo > 0:
        return "supported"
    return "not supported" if hi < 0 else "not distinguishable at this scale"


def _cost(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    keys = ("macs", "epoch_time", "latency_ms")
    if any(not a.get(k) or not b.get(k) for k in keys):
        return None
    macs, epoch, latency = (a[k] / b[k] for k in keys)
    over = [ratio > macs * (1 + COST_MARGIN) for ratio in (epoch, latency)]
    verdict = "supported" if all(over) else "not supported" if not any(over) else "mixed"
    return {"macs_ratio": macs, "epoch_ratio": epoch, "latency_ratio": latency,
            "verdict": verdict}  # fmt: skip


def check_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdict of every claim whose two variants are among ``rows``.

    Args:
        rows: the run's variant rows: ``variant`` and ``accs`` (per-seed final accuracies),
            and for cost claims ``macs``, ``epoch_time`` and ``latency_ms``.

    Returns:
        One dict per applicable claim: ``claim``, ``source``, ``a``, ``b``, ``kind``,
        ``verdict`` and either ``diff`` (accuracy claims: :func:`diff_ci` of a − b) or
        ``cost`` (ratios of a to b).
    """
    by_name = {r["variant"]: r for r in rows}
    results = []
    for claim in CLAIMS:
        a, b = _find(by_name, claim.a), _find(by_name, claim.b)
        if a is None or b is None:
            continue
        entry: dict[str, Any] = {
            "claim": claim.text, "source": claim.source,
            "a": a["variant"], "b": b["variant"], "kind": claim.kind,
        }  # fmt: skip
        if claim.kind == "slower":
            cost = _cost(a, b)
            if cost is None:
                continue
            entry.update(cost=cost, verdict=cost["verdict"])
        else:
            diff = diff_ci(a["accs"], b["accs"])
            entry.update(diff=diff, verdict=_accuracy_verdict(claim.kind, diff))
        results.append(entry)
    return results


def claims_table(claims: list[dict[str, Any]]) -> str:
    """Markdown: each claim, what was compared, the measurement and the verdict."""
    lines = ["| claim | source | compared | measured | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        if "cost" in c:
            r = c["cost"]
            measured = (f"MACs ×{r['macs_ratio']:.3f}, s / epoch ×{r['epoch_ratio']:.2f}, "
                        f"latency ×{r['latency_ratio']:.2f}")  # fmt: skip
        else:
            d = c["diff"]
            interval = (
                "n/a" if d["lo"] != d["lo"] else f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
            )
            measured = f"Δ {100 * d['diff']:+.1f} points, 95 % CI {interval}"
        lines.append(f"| {c['claim']} | {c['source']} | {c['a']} vs {c['b']} | {measured} | "
                     f"{c['verdict']} |")  # fmt: skip
    return "\n".join(lines)
