"""Summaries of timing samples: medians and tails, never a single run."""

from __future__ import annotations

import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(values_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(values_ms),
        "median_ms": statistics.median(values_ms),
        "p95_ms": percentile(values_ms, 95),
        "p99_ms": percentile(values_ms, 99),
        "mean_ms": statistics.fmean(values_ms),
        "min_ms": min(values_ms),
        "max_ms": max(values_ms),
    }
