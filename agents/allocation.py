"""Allocations: one keep-ratio per layer that meets an environment's budget (on FLOPs, or
on predicted latency: the env's ``cost``).

Shared by the heuristics that plan an allocation up front and by the search agents; also
the single-shot heuristics' networks that the REINFORCE agents' ``best`` start measures.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from prune_env.bisection import counts_within_flops
from prune_env.env import PruningEnv, network_key
from prune_env.importance import global_threshold_counts
from prune_env.surgery import top_units


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


def global_threshold_units(env: PruningEnv, criterion: str) -> list[torch.Tensor]:
    """The units one global threshold on per-layer-normalised ``criterion`` scores keeps at
    the budget (every unit without a budget): the ``l1`` / ``ngf`` heuristic's network."""
    scores = [env.pruner.keep_scores(i, criterion) for i in range(env.n_layers)]
    counts = env.units if env.budget is None else global_threshold_allocation(env, scores)
    return [top_units(s, int(n)) for s, n in zip(scores, counts, strict=True)]


def heuristic_starts(env: PruningEnv, by_widths: bool = False) -> dict[str, list[torch.Tensor]]:
    """The distinct networks of the single-shot heuristics, as kept units per layer:
    ``uniform`` (the env's criterion picks the units), ``l1`` and ``ngf``. With ``by_widths``
    networks of the same widths count as one (for agents that choose widths and leave the
    units to the env's criterion)."""
    uniform = env.pruner.keep_indices(env.pruner.keep_counts(meet_budget(env, np.ones(env.n_layers))), env.criterion)
    starts: dict[tuple, tuple[str, list[torch.Tensor]]] = {}
    for name, kept in [("uniform", uniform), ("l1", global_threshold_units(env, "l1")),
                       ("ngf", global_threshold_units(env, "activation"))]:
        key = tuple(len(k) for k in kept) if by_widths else network_key(None, [sorted(k.tolist()) for k in kept])
        starts.setdefault(key, (name, kept))
    return dict(starts.values())
