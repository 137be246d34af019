"""Statistics of the samples: summaries with quantiles, ratios, the fastest peer."""

from __future__ import annotations

import statistics
from typing import Any


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, p90, p99, mean, min, max of *samples* (ms or any unit), and n.

    The quantiles are inclusive: with few samples they stay within the samples.
    """
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=100, method="inclusive")
        p90, p99 = q[89], q[98]
    else:
        p90 = p99 = s[0]
    return {
        "n": len(s),
        "median": statistics.median(s),
        "p90": p90,
        "p99": p99,
        "mean": statistics.fmean(s),
        "min": s[0],
        "max": s[-1],
    }


def per(total: float, count: int) -> float | None:
    """*total* / *count*, or None when there is nothing to divide by."""
    return total / count if count else None


def ratio(corral: float | None, peer: float | None) -> float | None:
    """Corral / peer, or None when either is missing (or the peer's figure is 0)."""
    return corral / peer if corral is not None and peer else None


def fastest_peer(stats: dict[str, Any], corral: str) -> tuple[str, float] | None:
    """The peer with the lowest median in *stats* (Corral's entry *corral* left out)."""
    return min(
        ((k, v["median"]) for k, v in stats.items() if k != corral and v.get("n")),
        key=lambda kv: kv[1],
        default=None,
    )
