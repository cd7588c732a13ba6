"""Episode rewards, chosen by name. ``metric`` is normalised to [0, 1] (accuracy, or
return divided by the best possible return); ``flops_ratio`` is pruned over base FLOPs."""

from __future__ import annotations

import math
from collections.abc import Callable

RewardFn = Callable[..., float]


def budget_reward(metric: float, flops_ratio: float, flops: float) -> float:
    """Accuracy at a hard FLOPs budget (the budget itself is enforced by the environment)."""
    return metric


def tradeoff_reward(metric: float, flops_ratio: float, flops: float, weight: float = 0.5) -> float:
    """Accuracy minus ``weight`` times the fraction of FLOPs kept."""
    return metric - weight * flops_ratio


def log_flops_reward(metric: float, flops_ratio: float, flops: float) -> float:
    """AMC's R_FLOPs: minus the error times the log of the FLOPs."""
    return -(1.0 - metric) * math.log(max(flops, 1.0))


REWARDS: dict[str, RewardFn] = {"budget": budget_reward, "tradeoff": tradeoff_reward, "log_flops": log_flops_reward,
                                "latency": budget_reward}
"""``latency`` is AMC's resource-constrained mode with time as the resource: accuracy at a hard
budget on predicted latency, which the environment enforces (it needs a ``latency_budget``)."""


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of: {', '.join(REWARDS)}")
    return REWARDS[name]
