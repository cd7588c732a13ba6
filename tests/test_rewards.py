"""The reward formulas, by hand, and the env passing them the right quantities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prune_env.rewards import REWARDS, budget_reward, get_reward, log_flops_reward, tradeoff_reward
from tests.helpers import toy_env


def test_formulas_give_hand_computed_values():
    assert budget_reward(metric=0.8, flops_ratio=0.5, flops=1e6) == 0.8
    assert tradeoff_reward(metric=0.8, flops_ratio=0.5, flops=1e6) == pytest.approx(0.8 - 0.25)
    assert tradeoff_reward(metric=0.8, flops_ratio=0.5, flops=1e6, weight=1.0) == pytest.approx(0.3)
    assert log_flops_reward(metric=0.9, flops=math.e ** 10, flops_ratio=0.5) == pytest.approx(-1.0)
    assert log_flops_reward(metric=1.0, flops=1e9, flops_ratio=1.0) == 0.0


def test_fewer_flops_and_higher_metric_both_pay():
    assert tradeoff_reward(0.8, 0.4, 4e5) > tradeoff_reward(0.8, 0.6, 6e5)
    assert log_flops_reward(0.8, 0.4, 4e5) > log_flops_reward(0.8, 0.6, 6e5)
    assert log_flops_reward(0.9, 0.5, 5e5) > log_flops_reward(0.8, 0.5, 5e5)


def test_unknown_reward_lists_the_valid_ones():
    with pytest.raises(ValueError, match="budget, tradeoff, log_flops, latency"):
        get_reward("speed")
    assert set(REWARDS) == {"budget", "tradeoff", "log_flops", "latency"}
    assert REWARDS["latency"] is REWARDS["budget"]  # the budget form, enforced on predicted latency


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_the_env_rewards_the_tradeoff_of_its_own_measurements(weight):
    env = toy_env(layers=2)
    env.reward_kwargs = {"weight": weight}
    env.reset(seed=0)
    for ratio in (0.5, 0.25):
        _, reward, done, _, info = env.step(np.array([ratio], dtype=np.float32))
    report = info["report"]
    assert done and report["keep_ratios"] == [0.5, 0.25]
    assert reward == pytest.approx(report["metric_pruned_val"] - weight * report["flops_ratio"])
    # the toy metric: 1 - mean |keep - optimum| with optimum (0.85, 0.35)
    assert report["metric_pruned_val"] == pytest.approx(1 - (0.35 + 0.10) / 2)
