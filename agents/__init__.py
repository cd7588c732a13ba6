"""Everything that chooses keep-ratios: learned agents and heuristic baselines."""

from __future__ import annotations

from agents.heuristics import HEURISTICS, make_heuristic
from prune_env.env import PruningEnv
from target_models import Target


def make_policy(name_or_path: str, target: Target, env_config: dict, seed: int = 0,
                criterion_given: bool = False):
    """An environment and a policy for it: a heuristic by name, or a saved agent by path.

    Heuristics bring their own unit criterion (L1 keeps high-magnitude units, NGF
    high-activation ones) unless the caller gave one explicitly.
    """
    env_config = dict(env_config)
    if name_or_path in HEURISTICS:
        preferred = HEURISTICS[name_or_path].preferred_criterion
        if preferred and not criterion_given:
            env_config["criterion"] = preferred
        env = PruningEnv(target, **env_config)
        return env, make_heuristic(name_or_path, env, seed=seed)
    from agents.search import load_agent

    env = PruningEnv(target, **env_config)
    return env, load_agent(name_or_path, env)


__all__ = ["HEURISTICS", "make_heuristic", "make_policy"]
