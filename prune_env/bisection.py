"""Bisection over a monotone predicate: the one search behind every budget fit (the env's
clamp, the heuristics' allocations, the searchers' rescaling)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def largest_int(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Largest n in [lo, hi] with ok(n), for a predicate true up to some point (lo if none)."""
    if not ok(lo):
        return lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def smallest_int(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Smallest n in [lo, hi] with ok(n), for a predicate true from some point on (hi if none)."""
    if not ok(hi):
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def largest_float(lo: float, hi: float, ok: Callable[[float], bool], steps: int = 60) -> float:
    """The largest x in [lo, hi] with ok(x), to ``steps`` halvings, for a predicate true up
    to some point (``lo`` if it is nowhere true)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def counts_within_flops(flops: Callable[[np.ndarray], float], counts_at: Callable[[float], np.ndarray],
                        budget: float, floor: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Unit counts ``max(counts_at(x), floor)`` (FLOPs rising with x) for the largest x in
    [lo, hi] whose FLOPs stay within ``budget``."""

    def counts(x: float) -> np.ndarray:
        return np.maximum(counts_at(x), floor)

    return counts(largest_float(lo, hi, lambda x: flops(counts(x)) <= budget))
