"""Channel rounding (``round_to=N``): every kept count a multiple of N or all of a layer's
units, in the env's clamp, the heuristics' plans, the scheduled NGF rounds and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from agents.allocation import play_allocation
from agents.base import run_episode
from agents.heuristics import HEURISTICS, make_heuristic
from prune_env import PruningEnv
from prune_env.env import allowed_counts
from target_models import get_target
from tests.helpers import needs_data
from tests.test_env import tiny_env


def _rounded(counts, units, n) -> bool:
    return all(c == u or (c % n == 0 and 0 < c <= u) for c, u in zip(counts, units, strict=True))


@pytest.mark.parametrize("units, floor, n, expected", [
    (64, 7, 8, [8, 16, 24, 32, 40, 48, 56, 64]),
    (10, 1, 8, [8, 10]),          # all units stay allowed when they are not a multiple
    (6, 1, 8, [6]),               # fewer units than N: all of them
    (64, 60, 16, [64]),           # the floor rounds up to the next multiple
    (12, 3, None, list(range(3, 13))),
])
def test_allowed_counts_never_exceed_the_units_nor_reach_zero(units, floor, n, expected):
    assert list(allowed_counts(units, floor, n)) == expected


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_any_actions_land_on_the_budget_with_rounded_counts(budget):
    env = tiny_env("cartpole_policy", flops_budget=budget, round_to=8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        report = play_allocation(env, rng.uniform(0.1, 1.0, env.n_layers), seed=0)
        assert _rounded(report["keep_counts"], env.units, 8)
        assert report["round_to"] == 8
        # a step of 8 units of a 64-wide layer moves FLOPs by about 1/8 of a layer's share
        assert abs(report["flops_ratio"] - budget) <= 0.08


@pytest.mark.parametrize("name", sorted(set(HEURISTICS) - {"ngf_scheduled"}))
def test_heuristics_plan_rounded_counts_within_the_budget(name):
    env = tiny_env("cartpole_policy", flops_budget=0.5, round_to=16,
                   criterion=HEURISTICS[name].preferred_criterion or "l1")
    report = run_episode(env, make_heuristic(name, env, seed=1), seed=0)
    assert _rounded(report["keep_counts"], env.units, 16)
    # the clamp lands on the allowed count nearest the budget: within one 16-unit step of it
    assert abs(report["flops_ratio"] - 0.5) <= 0.1


def test_mask_actions_are_rounded_to_the_allowed_counts():
    env = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff", action_mode="mask", round_to=8)
    env.reset(seed=0)
    for _ in range(env.n_layers):
        scores = np.zeros(env.action_space.shape, dtype=np.float32)
        scores[:21] = 1.0  # asks for 21 units: rounded to 24, the nearest multiple of 8
        _, _, done, _, info = env.step(scores)
    assert info["report"]["keep_counts"] == [24, 24]
    assert [len(k) for k in info["report"]["kept_units"]] == [24, 24]


def test_bad_rounding_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="round_to must be a whole number"):
        tiny_env("cartpole_policy", round_to=0)
    with pytest.raises(ValueError, match="round_to must be a whole number"):
        tiny_env("cartpole_policy", round_to=2.5)
    with pytest.raises(ValueError, match="round_to=64 allow"):
        tiny_env("cartpole_policy", flops_budget=0.3, round_to=64)


@needs_data
def test_scheduled_ngf_rounds_every_round_on_the_cnn():
    target = get_target("cnn_cifar10", limit=64)
    env = PruningEnv(target, model=target.build_model(), flops_budget=0.4, val_size=64, calibration_size=64,
                     round_to=8)
    policy = make_heuristic("ngf_scheduled", env)
    policy.finetune_epochs = 0.0
    _, report = policy.run()
    assert _rounded(report["keep_counts"], env.units, 8)
    assert report["flops_ratio"] <= 0.4 * 1.001  # the rounds fit their plans from below


def test_a_budget_between_two_counts_takes_the_count_that_can_land_closer():
    """When no allowed count of a layer keeps the budget reachable, the clamp takes the count
    (the one under it or the one over it) whose nearest reachable completion lands closer."""
    env = tiny_env("cartpole_policy", flops_budget=0.5, round_to=32)
    env.reset(seed=0)
    t, rest = 0, env.allowed[1:]
    checked = 0
    for budget in np.linspace(0.3, 1.0, 141):
        env.budget = float(budget)
        lo, hi = env._count_bounds(t)
        if lo != hi:
            continue
        # every count of layer 0 and how close its best completion can land to the budget
        def distance(n):
            costs = [env._cost_with(t, n, np.array([n, *c])) for c in np.array(np.meshgrid(*rest)).T.reshape(-1, len(rest))]
            return min(abs(c - env.budget_cost) for c in costs)
        assert distance(lo) <= min(distance(n) for n in env.allowed[t]) + 1e-9, budget
        checked += 1
    assert checked > 0
