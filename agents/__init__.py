"""Everything that chooses keep-ratios: learned agents and heuristic baselines."""

from __future__ import annotations

from agents.heuristics import HEURISTICS, make_heuristic
from prune_env.cli import UsageError
from prune_env.config import EnvConfig
from prune_env.env import PruningEnv
from target_models import Target

BUDGET_SETTINGS = {name: getattr(EnvConfig, name, None) for name in (
    "flops_budget", "latency_budget", "latency_batch_size", "latency_engine", "latency_statistic",
    "latency_table_rounds", "latency_threads", "round_to")}
"""What a run's own network must have been searched under to be replayed as it is (``run_best``),
with each setting's default (runs saved before a setting existed used it)."""


class UnknownPolicyError(UsageError):
    """A policy that is neither a heuristic's name nor a path that exists."""


def check_policy(name_or_path: str) -> str:
    """Check a policy before any work: a heuristic's name, or a run folder or agent file
    (whose kind is read from it). Returns the heuristic's name or the agent's kind; raises
    :class:`UnknownPolicyError` or :class:`~target_models.CheckpointError` in one line."""
    from pathlib import Path

    from agents.search import agent_file

    if name_or_path in HEURISTICS:
        return name_or_path
    if not Path(name_or_path).expanduser().exists():
        close = [h for h in HEURISTICS if h.lower() == name_or_path.lower()]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownPolicyError(
            f"unknown policy {name_or_path!r}{hint}: the heuristics are {', '.join(HEURISTICS)}; for a learned "
            "agent, pass the --out folder of scripts/train_agent.py (or its checkpoint/agent file)")
    return agent_file(name_or_path)[0]


def saved_run(path: str) -> dict | None:
    """The ``config.json`` and ``report.json`` of a train_agent.py run folder (None if
    ``path`` is not one)."""
    import json
    from pathlib import Path

    folder = Path(path).expanduser()
    if not (folder.is_dir() and (folder / "config.json").exists() and (folder / "report.json").exists()):
        return None
    return {"config": json.loads((folder / "config.json").read_text()),
            "report": json.loads((folder / "report.json").read_text())}


def make_policy(name_or_path: str, target: Target, env_config: dict, seed: int = 0,
                criterion_given: bool = False, finetune_budget: float | None = None):
    """An environment, a policy for it, and how the policy acts (``policy_mode``): a
    heuristic by name (``heuristic``), a run folder at its own budget (``run_best``: the
    run's best network, rebuilt from its keep-ratios), or a saved agent (``deterministic``:
    its deterministic policy; a warning when the run was trained at another budget).

    Heuristics bring their own unit criterion (L1 keeps high-magnitude units, NGF
    high-activation ones) unless the caller gave one explicitly. ``finetune_budget`` reaches
    heuristics that fine-tune between rounds (:func:`~agents.heuristics.make_heuristic`).
    """
    import sys

    from agents.heuristics import FixedAllocation

    env_config = dict(env_config)
    if name_or_path in HEURISTICS:
        preferred = HEURISTICS[name_or_path].preferred_criterion
        if preferred and not criterion_given:
            env_config["criterion"] = preferred
        env = PruningEnv(target, **env_config)
        return env, make_heuristic(name_or_path, env, seed=seed, finetune_budget=finetune_budget), "heuristic"
    from agents.search import action_mode_of, agent_file, load_agent

    env = PruningEnv(target, **env_config, action_mode=action_mode_of(agent_file(name_or_path)[0]))
    run = saved_run(name_or_path)
    if run is not None:
        trained_env = run["config"].get("env", {})
        trained = {k: trained_env.get(k, default) for k, default in BUDGET_SETTINGS.items()}
        wanted = {k: env_config.get(k, default) for k, default in BUDGET_SETTINGS.items()}
        report = run["report"]
        if trained == wanted and report.get("keep_ratios"):
            name = run["config"].get("agent_kind", "agent")
            return env, FixedAllocation(env, report["keep_ratios"], name, report.get("kept_units")), "run_best"
        differ = ", ".join(f"{k} {trained[k]} (now {wanted[k]})" for k in BUDGET_SETTINGS if trained[k] != wanted[k])
        print(f"warning: the agent in {name_or_path} was trained at another budget: {differ}; applying its "
              "deterministic policy", file=sys.stderr)
    return env, load_agent(name_or_path, env), "deterministic"


__all__ = ["HEURISTICS", "UnknownPolicyError", "check_policy", "make_heuristic", "make_policy", "saved_run"]
