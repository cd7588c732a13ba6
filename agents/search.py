"""The search loop shared by every learning and search agent: monitor, checkpoints, resume.

:class:`SearchMonitor` wraps the environment and sees every finished episode, whichever
agent plays it: it keeps the best pruned network, logs to TensorBoard (``prune/...``),
drives the progress bar, and notes when the agent first beats a reference reward.
:func:`search` trains an agent in whole updates, checkpointing agent and monitor together
so that ``resume`` continues from the saved episode count without losing episodes.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from agents.ppo import PPOAgent
from agents.reinforce import ReinforceLayerAgents
from agents.searchers import Evolution, RandomSearch
from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError, atomic_save

AGENTS = {"ppo": PPOAgent, "reinforce": ReinforceLayerAgents, "random_search": RandomSearch,
          "evolution": Evolution}
AGENT_FILES = {"ppo": "agent.zip", "reinforce": "agent.pt", "random_search": "agent_random_search.pt",
               "evolution": "agent_evolution.pt"}


class SearchMonitor(gym.Wrapper):
    """Records every finished episode of a :class:`PruningEnv`.

    With ``total_episodes`` set, only the first ``total_episodes`` episodes are candidates
    for the best network: agents that update in whole rollouts (PPO) may play a few more,
    which are counted in ``episodes`` but never chosen, so every searcher of a comparison
    gets exactly the same number of measured candidates."""

    def __init__(self, env: PruningEnv, log_dir: str | Path | None = None, total_episodes: int | None = None,
                 reference_reward: float | None = None, show_progress: bool = True):
        super().__init__(env)
        self.limit = total_episodes
        self.episodes, self.seconds = 0, 0.0
        self.best_record: dict[str, Any] | None = None
        self.best_model: torch.nn.Module | None = None
        self.rewards: list[float] = []
        self.reference_reward = reference_reward
        self.first_beat: dict[str, float] | None = None
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir))
        self._bar = tqdm(total=total_episodes, desc=f"search {env.target.name}", unit="episode",
                         disable=not show_progress, dynamic_ncols=True)
        self._started = time.perf_counter()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self._record(info["report"])
        return obs, reward, terminated, truncated, info

    @property
    def counted_episodes(self) -> int:
        """Episodes that were candidates for the best network (at most ``total_episodes``)."""
        return len(self.rewards)

    def _record(self, record: dict) -> None:
        self.episodes += 1
        if self.limit is not None and len(self.rewards) >= self.limit:
            return  # beyond the episode budget: played to finish a rollout, never a candidate
        self.rewards.append(float(record["reward"]))
        now = self.seconds + time.perf_counter() - self._started
        if self.best_record is None or record["reward"] > self.best_record["reward"]:
            self.best_record = {**record, "episode": len(self.rewards)}
            self.best_model = copy.deepcopy(self.env.unwrapped.last_model)
        if (self.reference_reward is not None and self.first_beat is None
                and record["reward"] >= self.reference_reward):
            self.first_beat = {"episode": self.episodes, "seconds": round(now, 2)}
        if self._writer is not None:
            w, n = self._writer, self.episodes
            w.add_scalar("prune/reward", record["reward"], n)
            w.add_scalar("prune/metric", record["metric_pruned_val"], n)
            w.add_scalar("prune/flops_ratio", record["flops_ratio"], n)
            w.add_scalar("prune/best_reward", self.best_record["reward"], n)
            for i, ratio in enumerate(record["keep_ratios"]):
                w.add_scalar(f"prune/keep_ratio_{i}", ratio, n)
        self._bar.update(1)
        self._bar.set_postfix(reward=f"{record['reward']:.4f}", best=f"{self.best_record['reward']:.4f}")

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self._started

    def state(self) -> dict:
        """What a checkpoint needs to resume the search (loadable with ``weights_only``)."""
        best = self.best_model
        return {"episodes": self.episodes, "seconds": self.elapsed(), "rewards": self.rewards,
                "best_record": self.best_record, "first_beat": self.first_beat,
                "best_model": None if best is None else best.state_dict()}

    def restore(self, state: dict, build_model) -> None:
        self.episodes, self.seconds, self.rewards = state["episodes"], state["seconds"], list(state["rewards"])
        self.best_record, self.first_beat = state["best_record"], state["first_beat"]
        if state["best_model"] is not None:
            self.best_model = build_model(self.best_record["keep_counts"])
            self.best_model.load_state_dict(state["best_model"])
            self.best_model.eval()
        self._bar.update(self.counted_episodes)
        self._started = time.perf_counter()

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()


def make_agent(kind: str, env: PruningEnv, hparams: dict | None = None, seed: int = 0):
    if kind not in AGENTS:
        raise ValueError(f"unknown agent {kind!r}; choose one of: {', '.join(AGENTS)}")
    return AGENTS[kind](env, seed=seed, **(hparams or {}))


def load_agent(path: str | Path, env: PruningEnv):
    """A saved agent from its file, or from a run folder that holds one."""
    path = Path(path)
    if path.is_dir():
        found = [path / "checkpoint" / f for f in AGENT_FILES.values() if (path / "checkpoint" / f).exists()]
        if not found:
            files = ", ".join(f"checkpoint/{f}" for f in AGENT_FILES.values())
            raise CheckpointError(f"{path} holds no saved agent ({files}); train one with scripts/train_agent.py")
        path = found[0]
    if not path.exists():
        raise CheckpointError(f"no agent at {path}; train one with scripts/train_agent.py")
    kind = "ppo" if path.suffix == ".zip" else saved_kind(path)
    return AGENTS[kind].load(path, env)


def saved_kind(path: str | Path) -> str:
    """The agent kind stored in a ``.pt`` agent checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read agent checkpoint {path} ({exc})") from exc
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind not in AGENTS or kind == "ppo":
        raise CheckpointError(f"{path} holds no known agent (kind {kind!r}); expected one of: "
                              f"{', '.join(k for k in AGENTS if k != 'ppo')}")
    return kind


def search(agent, env: PruningEnv, monitor: SearchMonitor, episodes: int, checkpoint_dir: Path | None = None) -> None:
    """Train ``agent`` until ``monitor`` has seen ``episodes`` episodes.

    Agent and monitor are checkpointed together after every update, the only points where
    both agree on the episode count; an interruption loses at most the episodes of the
    update in progress, and ``--resume`` continues from the count saved last."""

    def after_update(_agent) -> None:
        if checkpoint_dir is not None:
            save_checkpoint(agent, monitor, checkpoint_dir)

    remaining = episodes - monitor.counted_episodes
    if remaining > 0:
        agent.learn(remaining, env=monitor, callback=after_update)


def save_checkpoint(agent, monitor: SearchMonitor, checkpoint_dir: Path) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    agent.save(checkpoint_dir / AGENT_FILES[agent.name])
    atomic_save(monitor.state(), checkpoint_dir / "search_state.pt")


def restore_checkpoint(kind: str, env: PruningEnv, monitor: SearchMonitor, checkpoint_dir: Path, build_model):
    """The agent and monitor saved in ``checkpoint_dir``."""
    agent_path, state_path = checkpoint_dir / AGENT_FILES[kind], checkpoint_dir / "search_state.pt"
    if not agent_path.exists() or not state_path.exists():
        raise CheckpointError(f"nothing to resume in {checkpoint_dir}: no {agent_path.name} and search_state.pt")
    agent = AGENTS[kind].load(agent_path, env)
    monitor.restore(torch.load(state_path, weights_only=True), build_model)
    if agent.episodes_done != monitor.episodes:
        raise CheckpointError(f"{checkpoint_dir}: agent ({agent.episodes_done}) and search ({monitor.episodes}) "
                              "episode counts disagree")
    return agent


def best_of(monitor: SearchMonitor, env: PruningEnv, agent) -> tuple[torch.nn.Module, dict]:
    """The best network among the counted episodes (the agent's deterministic policy only
    when no episode was played: an extra episode would break equal episode budgets)."""
    from agents.base import run_episode

    if monitor.best_record is None:
        record = run_episode(env, agent, seed=0, deterministic=True)
        return env.last_model, {**record, "episode": "deterministic"}
    return monitor.best_model, monitor.best_record


def mean_reward(rewards: list[float], last: int = 20) -> float:
    return float(np.mean(rewards[-last:])) if rewards else float("nan")
