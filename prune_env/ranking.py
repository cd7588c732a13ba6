"""Rank agreement between two scorings of the same candidates (reward fidelity)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) pairs over the pairs untied in each
    scoring; 1 when both rank alike, -1 when one reverses the other, nan if undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equally long 1-d scorings, got shapes {a.shape} and {b.shape}")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    untied_a, untied_b = np.count_nonzero(da), np.count_nonzero(db)
    if untied_a == 0 or untied_b == 0:
        return float("nan")
    return float(np.sum(da * db) / np.sqrt(untied_a * untied_b))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    sorted_a = a[order]
    start = 0
    for end in range(1, len(a) + 1):
        if end == len(a) or sorted_a[end] != sorted_a[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (nan if undefined)."""
    ra, rb = average_ranks(x), average_ranks(y)
    if len(ra) != len(rb):
        raise ValueError("need two equally long scorings")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
