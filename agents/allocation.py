"""Allocations: one keep-ratio per layer that meets an environment's budget (on FLOPs, or
on predicted latency: the env's ``cost``).

Shared by the heuristics that plan an allocation up front and by the search agents.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from prune_env.bisection import counts_within_flops
from prune_env.env import PruningEnv
from prune_env.importance import global_threshold_counts


def counts_meeting_budget(env: PruningEnv, counts_at: Callable[[float], np.ndarray], budget: float,
                          lo: float, hi: float) -> np.ndarray:
    """Unit counts ``counts_at(x)`` (cost rising with x, at least ``min_keep``, rounded down
    to the env's allowed counts) for the x whose cost (the env's: FLOPs or predicted
    latency) comes closest to ``budget`` from below, found by bisection."""
    return counts_within_flops(env.cost, lambda x: env.round_counts(counts_at(x)), budget,
                               env.min_counts, lo, hi)


def global_threshold_allocation(env: PruningEnv, scores: list) -> np.ndarray:
    """Unit counts of one global threshold on per-layer-normalised ``scores`` that meet the
    budget (the rule of the ``l1`` and ``ngf`` heuristics)."""
    return counts_meeting_budget(env, global_threshold_counts(scores), env.budget_cost, 0.0, 1.0)


def meet_budget(env: PruningEnv | gym.Env, ratios: np.ndarray) -> np.ndarray:
    """``ratios`` scaled together until their cost (FLOPs or predicted latency) meets the budget (from below), clipped
    to [min_keep, 1]; only clipped when the environment has no budget."""
    base = env.unwrapped
    ratios = np.clip(np.asarray(ratios, dtype=np.float64), base.min_keep, 1.0)
    if base.budget is None:
        return ratios
    counts = counts_meeting_budget(
        base, lambda s: base.pruner.keep_counts(np.clip(ratios * s, 1e-9, 1.0)),
        base.budget_cost, 0.0, 1.0 / ratios.min())
    return np.clip(counts / np.asarray(base.units), base.min_keep, 1.0)


def sample_allocation(env: PruningEnv | gym.Env, rng: np.random.Generator) -> np.ndarray:
    """Keep-ratios drawn independently uniform in [min_keep, 1] per layer, then scaled
    together to meet the budget: every layer's ratio ranges over the whole interval."""
    base = env.unwrapped
    return meet_budget(base, rng.uniform(base.min_keep, 1.0, base.n_layers))


def play_allocation(env: PruningEnv | gym.Env, ratios: np.ndarray, seed: int | None = None) -> dict:
    """Play one episode with a keep-ratio per layer (through any wrappers of ``env``); returns
    the final ``info["report"]``. The env may clamp the ratios to keep the budget reachable:
    ``report["keep_ratios"]`` holds the ones played."""
    return play_actions(env, lambda layer: np.array([ratios[layer]], dtype=np.float32), seed)


def play_actions(env: PruningEnv | gym.Env, action_for: Callable[[int], np.ndarray], seed: int | None = None) -> dict:
    """Play one episode (through any wrappers of ``env``) with ``action_for(layer)`` at each
    layer; returns the final ``info["report"]``."""
    from agents.parallel import play_episodes

    return play_episodes(env, [lambda layer, obs: action_for(layer)], [seed])[0]
