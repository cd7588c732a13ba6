"""Search baselines as agents: random search (EagleEye) and evolution (in the spirit of LeGR).

Both plan whole allocations (one keep-ratio per layer) that meet the FLOPs budget, play
each as one episode and keep the best by reward. Every random draw comes from a numpy
Generator seeded by (seed, episode) or (seed, generation, child), so a search that stops
and resumes from a checkpoint plays the same allocations as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.allocation import meet_budget, sample_allocation
from agents.parallel import play_episodes
from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError, atomic_save


def _draw(seed: int, *key: int) -> tuple[np.random.Generator, int]:
    """The Generator for ``key`` and the episode's reset seed (its first draw)."""
    rng = np.random.default_rng((seed, *key))
    return rng, int(rng.integers(2**31))


class _AllocationSearch:
    """Shared by the search agents: best allocation, predict, save and load."""

    name = "search"

    def __init__(self, env: PruningEnv, hparams: dict[str, Any]):
        self.env = env
        self.hparams = hparams
        self.episodes_done = 0
        self.best_ratios: list[float] | None = None
        self.best_reward: float | None = None
        self._first: np.ndarray | None = None
        self.workers = None
        """:class:`~agents.parallel.EpisodeWorkers` that measure each batch in parallel (None: serially)."""

    @property
    def n_layers(self) -> int:
        return self.env.unwrapped.n_layers

    def _first_allocation(self) -> np.ndarray:
        """The allocation of the first episode (what ``predict`` answers before any)."""
        raise NotImplementedError

    def allocation(self) -> np.ndarray:
        """The best allocation found so far (the first planned one before any episode)."""
        if self.best_ratios is not None:
            return np.asarray(self.best_ratios)
        if self._first is None:
            self._first = self._first_allocation()
        return self._first

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        layer = min(self.env.unwrapped.current_layer, self.n_layers - 1)
        return np.array([self.allocation()[layer]], dtype=np.float32), state

    def _play(self, env: gym.Env, planned: list[tuple[np.ndarray, int]]) -> list[dict]:
        """Play one episode per (allocation, reset seed), in parallel with :attr:`workers`;
        the best is updated in episode order."""
        def allocation(ratios: np.ndarray):
            return lambda layer, obs: np.array([ratios[layer]], dtype=np.float32)

        reports = play_episodes(env, [allocation(r) for r, _ in planned], [s for _, s in planned], self.workers)
        for report in reports:
            reward = float(report["reward"])
            if self.best_reward is None or reward > self.best_reward:
                self.best_reward, self.best_ratios = reward, [float(r) for r in report["keep_ratios"]]
            self.episodes_done += 1
        return reports

    def _state(self) -> dict[str, Any]:
        return {}

    def _restore(self, ckpt: dict[str, Any]) -> None:
        pass

    def save(self, path: str | Path) -> None:
        atomic_save({"kind": self.name, "hparams": self.hparams, "n_layers": self.n_layers,
                     "episodes_done": self.episodes_done, "best_ratios": self.best_ratios,
                     "best_reward": self.best_reward, **self._state()}, path)

    @classmethod
    def load(cls, path: str | Path, env: PruningEnv):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read agent checkpoint {path} ({exc})") from exc
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
        if kind != cls.name:
            raise CheckpointError(f"{path} holds a {kind!r} agent, not {cls.name!r}")
        if ckpt.get("n_layers") != env.unwrapped.n_layers:
            raise CheckpointError(f"{path} is a {cls.name} agent for {ckpt.get('n_layers')} layers, "
                                  f"not for this {env.unwrapped.n_layers}-layer environment")
        try:
            agent = cls(env, **ckpt["hparams"])
            agent.episodes_done = int(ckpt["episodes_done"])
            agent.best_ratios, agent.best_reward = ckpt["best_ratios"], ckpt["best_reward"]
            agent._restore(ckpt)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} is an incomplete {cls.name} checkpoint ({exc!r})") from exc
        return agent


class RandomSearch(_AllocationSearch):
    """EagleEye's random search: each episode plays a fresh :func:`sample_allocation`."""

    name = "random_search"

    def __init__(self, env: PruningEnv, batch_episodes: int = 8, seed: int = 0):
        if batch_episodes < 1:
            raise ValueError(f"batch_episodes must be at least 1, got {batch_episodes}")
        super().__init__(env, {"batch_episodes": batch_episodes, "seed": seed})

    def _planned(self, episode: int) -> tuple[np.ndarray, int]:
        rng, reset_seed = _draw(self.hparams["seed"], episode)
        return sample_allocation(self.env, rng), reset_seed

    def _first_allocation(self) -> np.ndarray:
        return self._planned(0)[0]

    def learn(self, total_episodes: int, env: gym.Env | None = None,
              callback: Callable[[RandomSearch], Any] | None = None) -> RandomSearch:
        """Play ``total_episodes`` more episodes; ``callback(agent)`` after every batch."""
        env = env if env is not None else self.env
        target = self.episodes_done + total_episodes
        while self.episodes_done < target:
            n = min(self.hparams["batch_episodes"], target - self.episodes_done)
            self._play(env, [self._planned(self.episodes_done + i) for i in range(n)])
            if callback is not None and callback(self) is False:
                break
        return self


class Evolution(_AllocationSearch):
    """Truncation-selection evolution of allocations, elitist (parents survive).

    Generation 0 is ``population`` random allocations; each later one evaluates
    ``population - parents`` children, each a uniformly chosen parent plus Gaussian noise
    (std ``mutation_std * mutation_decay ** (generation - 1)``), clipped and rescaled to
    the budget. The best ``parents`` of parents and children become the next parents.
    """

    name = "evolution"

    def __init__(self, env: PruningEnv, population: int = 16, parents: int = 4, mutation_std: float = 0.1,
                 mutation_decay: float = 0.98, seed: int = 0):
        if not 1 <= parents < population:
            raise ValueError(f"need 1 <= parents < population, got parents={parents}, population={population}")
        if mutation_std < 0 or not 0 < mutation_decay <= 1:
            raise ValueError(f"need mutation_std >= 0 and 0 < mutation_decay <= 1, got {mutation_std}, "
                             f"{mutation_decay}")
        super().__init__(env, {"population": population, "parents": parents, "mutation_std": mutation_std,
                               "mutation_decay": mutation_decay, "seed": seed})
        self.generation = 0
        self.parent_genomes: list[list[float]] = []  # best first
        self.parent_fitness: list[float] = []
        self.genomes: list[list[float]] = []  # evaluated so far in this generation (played ratios)
        self.fitness: list[float] = []

    def _generation_size(self) -> int:
        h = self.hparams
        return h["population"] if self.generation == 0 else h["population"] - h["parents"]

    def _planned(self, generation: int, index: int) -> tuple[np.ndarray, int]:
        rng, reset_seed = _draw(self.hparams["seed"], generation, index)
        if generation == 0:
            return sample_allocation(self.env, rng), reset_seed
        h = self.hparams
        parent = np.asarray(self.parent_genomes[int(rng.integers(len(self.parent_genomes)))])
        std = h["mutation_std"] * h["mutation_decay"] ** (generation - 1)
        return meet_budget(self.env, parent + rng.normal(0.0, std, parent.shape)), reset_seed

    def _first_allocation(self) -> np.ndarray:
        return self._planned(0, 0)[0]

    def _select(self) -> None:
        genomes = self.parent_genomes + self.genomes
        fitness = self.parent_fitness + self.fitness
        order = np.argsort(-np.asarray(fitness), kind="stable")[:self.hparams["parents"]]
        self.parent_genomes = [genomes[i] for i in order]
        self.parent_fitness = [fitness[i] for i in order]
        self.genomes, self.fitness = [], []
        self.generation += 1

    def learn(self, total_episodes: int, env: gym.Env | None = None,
              callback: Callable[[Evolution], Any] | None = None) -> Evolution:
        """Play ``total_episodes`` more episodes, one per individual; ``callback(agent)`` after
        every generation, and after the last episode when it ends mid-generation."""
        env = env if env is not None else self.env
        target = self.episodes_done + total_episodes
        while self.episodes_done < target:  # the rest of the generation as one batch
            done = len(self.fitness)
            n = min(self._generation_size() - done, target - self.episodes_done)
            reports = self._play(env, [self._planned(self.generation, done + i) for i in range(n)])
            self.genomes += [[float(r) for r in report["keep_ratios"]] for report in reports]
            self.fitness += [float(report["reward"]) for report in reports]
            if len(self.fitness) == self._generation_size():
                self._select()
            if callback is not None and callback(self) is False:
                break
        return self

    def _state(self) -> dict[str, Any]:
        return {"generation": self.generation, "parent_genomes": self.parent_genomes,
                "parent_fitness": self.parent_fitness, "genomes": self.genomes, "fitness": self.fitness}

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.generation = int(ckpt["generation"])
        self.parent_genomes = [list(g) for g in ckpt["parent_genomes"]]
        self.parent_fitness = list(ckpt["parent_fitness"])
        self.genomes = [list(g) for g in ckpt["genomes"]]
        self.fitness = list(ckpt["fitness"])
