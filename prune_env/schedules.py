"""Schedules shared by pruning in rounds and pruning during training."""

from __future__ import annotations


def polynomial_decay(start: float, end: float, progress: float, power: float = 3.0) -> float:
    """``end + (start - end) * (1 - progress) ** power`` with progress clipped to [0, 1]:
    fast at first, gentle towards ``end`` (Zhu and Gupta's gradual pruning schedule)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * (1.0 - progress) ** power
