"""``budget_tolerance``: how far under the budget a network may land. With none, a layer whose
FLOPs are a small share has no choice (its count fills the budget's remainder); with one,
every network lands in ``[budget - tolerance, budget]`` and such layers choose freely."""

from __future__ import annotations

import numpy as np
import pytest

from agents.allocation import play_allocation
from prune_env.config import ConfigError, load_config
from tests.helpers import needs_data
from tests.test_env import tiny_env


def _bounds_per_step(env, ratios) -> list[tuple[int, int]]:
    """The clamp range the env offers at each step while playing ``ratios``."""
    env.reset(seed=0)
    bounds = []
    for r in ratios:
        bounds.append(env._bounds)
        env.step(np.array([r], dtype=np.float32))
    return bounds


@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_random_actions_land_within_the_tolerance_under_the_budget(budget):
    env = tiny_env("cartpole_policy", flops_budget=budget, budget_tolerance=0.05)
    rng = np.random.default_rng(0)
    ratios = [play_allocation(env, rng.uniform(0.1, 1.0, env.n_layers), seed=0)["flops_ratio"] for _ in range(30)]
    assert min(ratios) >= budget - 0.05 - 1e-9 and max(ratios) <= budget + 1e-9
    assert max(ratios) - min(ratios) > 0.01  # the window is used, not only its top


def test_a_tolerance_only_widens_the_clamp_from_below():
    """At every step of the exact env's networks the loose range reaches lower and never higher
    (the exact clamp may step one count over the budget where it falls between two counts; the
    loose one never does), and every exact network within the budget is taken unchanged."""
    exact = tiny_env("cartpole_policy", flops_budget=0.4)
    loose = tiny_env("cartpole_policy", flops_budget=0.4, budget_tolerance=0.05)
    rng = np.random.default_rng(1)
    widened = 0
    for _ in range(10):
        report = play_allocation(exact, rng.uniform(0.1, 1.0, exact.n_layers), seed=0)
        ratios = np.array(report["keep_counts"]) / exact.units
        for (lo, hi), (lo_t, hi_t) in zip(_bounds_per_step(exact, ratios), _bounds_per_step(loose, ratios),
                                          strict=True):
            assert lo_t <= lo and lo - 1 <= hi_t <= hi
            widened += lo_t < lo
        if report["flops_ratio"] <= 0.4:
            assert play_allocation(loose, ratios, seed=0)["keep_counts"] == report["keep_counts"]
    assert widened > 0


@needs_data
def test_the_lstm_dense_layer_gets_a_choice_only_with_a_tolerance():
    """At 50% with the whole embedding kept, the LSTM's width is set by the budget and the dense
    layer (0.03% of the FLOPs) has one allowed count; 1% of tolerance frees the dense layer."""
    exact = tiny_env("lstm_imdb", flops_budget=0.5)
    loose = tiny_env("lstm_imdb", flops_budget=0.5, budget_tolerance=0.01)
    dense = exact.n_layers - 1
    lo, hi = _bounds_per_step(exact, [1.0, 0.65, 1.0])[dense]
    assert lo == hi
    lo_t, hi_t = _bounds_per_step(loose, [1.0, 0.65, 1.0])[dense]
    assert lo_t == loose.min_counts[dense] and hi_t == loose.units[dense]
    for keep in (0.1, 0.5, 1.0):
        report = play_allocation(loose, np.array([1.0, 0.65, keep]), seed=0)
        assert report["keep_counts"][dense] == max(round(keep * 64), loose.min_counts[dense])
        assert 0.49 <= report["flops_ratio"] <= 0.5 and report["budget_tolerance"] == 0.01


@pytest.mark.parametrize("tolerance", [-0.01, 0.4, 0.6])
def test_a_tolerance_outside_zero_to_the_budget_is_refused(tolerance):
    with pytest.raises(ValueError, match="budget_tolerance must lie in"):
        tiny_env("cartpole_policy", flops_budget=0.4, budget_tolerance=tolerance)


def test_the_config_refuses_a_tolerance_at_or_above_the_budget(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  flops_budget: 0.3\n  budget_tolerance: 0.3\n")
    with pytest.raises(ConfigError, match="env.budget_tolerance must lie in"):
        load_config("cartpole_policy", config_file=path)
