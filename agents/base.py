"""The interface every agent shares (stable-baselines3's) and running one episode."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np
import torch

from prune_env.env import PruningEnv


class Agent(Protocol):
    """Anything with stable-baselines3's ``predict``; learned agents add learn/save/load."""

    name: str

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]: ...


class PrunesInRounds(ABC):
    """A policy that prunes over several rounds (the network changes between them), so it
    is not one episode of the environment: it runs itself and answers ``predict`` with the
    keep-ratios it reached."""

    name: str
    env: PruningEnv
    rounds: int
    seed: int = 0
    finetune_epochs: float = 0.0
    """Epochs of fine-tuning after each round but the last."""
    keep_ratios: np.ndarray | None = None

    @abstractmethod
    def run(self) -> tuple[Any, dict]:
        """Prune in rounds; the final model and its record (an episode's record)."""

    def between_rounds(self, model, k: int):
        """``model`` after round ``k``, fine-tuned for its share of the budget unless it is the last round.
        The fine-tune draws its dropout from ``seed + k`` alone, not from what the process ran
        before (a search), so one network and seed give one result."""
        if k < self.rounds and self.finetune_epochs > 0:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed + k)
                self.env.target.finetune(model, epochs=self.finetune_epochs, seed=self.seed + k)
        return model

    def finish(self, model, counts, kept_units=None) -> dict:
        """The record of the final ``model`` with ``counts`` units per layer (``kept_units``: the
        very units, when a channel policy chose them), measured as an episode's, with the
        fine-tuning spent between rounds (``finetune_epochs_spent``)."""
        env, counts = self.env, np.asarray(counts, dtype=np.int64)
        self.keep_ratios = counts / env.units
        record = env.measure(model, env.score(model), keep_counts=counts)
        if kept_units is not None:
            record["kept_units"] = [[int(i) for i in k] for k in kept_units]
        return {**record, "rounds": self.rounds, "finetune_epochs_spent": self.finetune_epochs * (self.rounds - 1)}

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        if self.keep_ratios is None:
            raise RuntimeError(f"call run() first: {self.name} prunes in rounds, not in one episode")
        return np.array([self.keep_ratios[self.env.unwrapped.current_layer]], dtype=np.float32), state


def run_episode(env: PruningEnv, agent: Agent, seed: int | None = None, deterministic: bool = True) -> dict:
    """Play one episode; returns the final ``info["report"]`` (``env.last_model`` holds the model)."""
    obs, _ = env.reset(seed=seed)
    while True:
        action, _ = agent.predict(obs, deterministic=deterministic)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info["report"]


def prune_with(env: PruningEnv, policy, seed: int = 0) -> tuple[Any, dict, int]:
    """The pruned model, its record and the episodes it took, for any policy: one
    deterministic episode, or the policy's own ``run()`` for those that prune in rounds."""
    if isinstance(policy, PrunesInRounds):
        model, record = policy.run()
        return model, record, policy.rounds
    record = run_episode(env, policy, seed=seed)
    return env.last_model, record, 1
