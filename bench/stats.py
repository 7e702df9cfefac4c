"""Latency summaries.

Exact percentiles where samples are few (S1 acks). For fanout, where a run can
hold millions of deliveries, each worker keeps a histogram of 10 µs buckets
(``{bucket: count}``, bucket = int(seconds * 1e5)) that merges by addition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

BUCKET = 1e-5  # seconds per histogram bucket

K = TypeVar("K")
N = TypeVar("N", int, float)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of sorted values; nan if none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def merge(counts: Iterable[dict[K, N]]) -> dict[K, N]:
    """Dicts of counts added up key by key: histograms, or several daemons' metrics."""
    out: dict[K, N] = {}
    for h in counts:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return out


def hist_percentiles(hist: dict[int, int], qs: Sequence[float]) -> list[float]:
    """Nearest-rank percentiles (seconds, bucket upper bound) of a bucket histogram."""
    total = sum(hist.values())
    if not total:
        return [math.nan for _ in qs]
    keys = sorted(hist)
    out = []
    for q in qs:
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for k in keys:
            seen += hist[k]
            if seen >= rank:
                out.append((k + 1) * BUCKET)
                break
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if not math.isnan(seconds) else math.nan
