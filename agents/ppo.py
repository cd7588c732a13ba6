"""PPO from stable-baselines3 on the pruning environment.

The environment's keep-ratio range ``[min_keep, 1]`` is rescaled to ``[-1, 1]`` with
Gymnasium's ``RescaleAction``, so the Gaussian policy's outputs (clipped to ``[-1, 1]`` by
SB3) map linearly onto the keep-ratio range.
"""

from __future__ import annotations

import functools
import io
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.parallel import measure_and_replay
from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError, atomic_write_bytes


def _rescaled(env: gym.Env) -> gym.Env:
    one = np.ones(1, dtype=np.float32)
    return gym.wrappers.RescaleAction(env, min_action=-one, max_action=one)


@functools.cache
def _ppo_class():
    """SB3's PPO, whose rollouts episode workers can measure (a class made on first use:
    stable-baselines3 is slow to import)."""
    from stable_baselines3 import PPO

    class ParallelRolloutPPO(PPO):
        """PPO whose rollout networks are measured by episode workers when ``measured_by`` is
        set to (workers, the monitored env): the rollout is played with the measurements
        deferred (the policy's actions and the observations never depend on a reward), then
        :func:`~agents.parallel.measure_and_replay` measures the networks and records the
        episodes through the monitored env, and their rewards go into the rollout buffer
        before the advantages are computed again: the updates of a serial run."""

        measured_by = None

        def _excluded_save_params(self) -> list[str]:
            return [*super()._excluded_save_params(), "measured_by"]

        def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps) -> bool:
            if self.measured_by is None:
                return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
            workers, monitored = self.measured_by
            base = monitored.unwrapped
            started = time.perf_counter()
            with base.deferred_measurement() as planned:
                complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
            base.timings["parallel_main"] += time.perf_counter() - started
            reports = measure_and_replay(monitored, planned, workers)
            monitored.reset()  # SB3 reset the env after the rollout's last episode; the replays ended it again
            rewards = [float(r["reward"]) for r in reports]
            pending = np.isnan(rollout_buffer.rewards)  # the last steps of the rollout's episodes, in order
            rollout_buffer.rewards[pending] = rewards
            for info, reward in zip(list(self.ep_info_buffer)[-len(rewards):], rewards, strict=False):
                info["r"] = round(reward, 6)  # what SB3's Monitor logs as the episode's return
            n_envs = rollout_buffer.rewards.shape[1]
            # every rollout ends with an episode: the value after it is never used
            rollout_buffer.compute_returns_and_advantage(torch.zeros(n_envs), np.ones(n_envs, dtype=bool))
            return complete

    return ParallelRolloutPPO


class PPOAgent:
    """stable-baselines3 PPO with the project's defaults; ``n_steps`` covers whole episodes."""

    name = "ppo"

    def __init__(
        self,
        env: PruningEnv,
        learning_rate: float = 3e-4,
        gamma: float = 0.99,
        clip_range: float = 0.2,
        n_epochs: int = 10,
        batch_size: int = 64,
        n_steps: int | None = None,
        ent_coef: float = 0.0,
        net_arch: tuple[int, ...] = (64, 64),
        seed: int = 0,
        tensorboard_log: str | None = None,
        _model=None,
    ):
        self.env = env
        self.workers = None
        """:class:`~agents.parallel.EpisodeWorkers` that measure each rollout in parallel (None: serially)."""
        layers = env.n_layers
        n_steps = n_steps or layers * max(8, math.ceil(batch_size / layers))
        n_steps = layers * math.ceil(n_steps / layers)  # whole episodes per rollout
        self.hparams = {"learning_rate": learning_rate, "gamma": gamma, "clip_range": clip_range,
                        "n_epochs": n_epochs, "batch_size": batch_size, "n_steps": n_steps,
                        "ent_coef": ent_coef, "net_arch": list(net_arch), "seed": seed}
        self.wrapped: gym.Env | None = None
        self.model = _model or _ppo_class()(
            "MlpPolicy", _rescaled(env), learning_rate=learning_rate, gamma=gamma, clip_range=clip_range,
            n_epochs=n_epochs, batch_size=min(batch_size, n_steps), n_steps=n_steps, ent_coef=ent_coef,
            policy_kwargs={"net_arch": list(net_arch)}, seed=seed, device="cpu", verbose=0,
            tensorboard_log=tensorboard_log,
        )

    @property
    def episodes_done(self) -> int:
        return self.model.num_timesteps // self.env.n_layers

    @property
    def episodes_per_update(self) -> int:
        return self.hparams["n_steps"] // self.env.n_layers

    def _to_ratio(self, action: np.ndarray) -> np.ndarray:
        low, high = self.env.min_keep, 1.0
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return (low + (a + 1.0) * 0.5 * (high - low)).astype(np.float32).reshape(1)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        action, _ = self.model.predict(observation, deterministic=deterministic)
        return self._to_ratio(action), state

    def learn(self, total_episodes: int, env: gym.Env | None = None, callback=None) -> PPOAgent:
        """Train for ``total_episodes`` more episodes (rounded up to whole rollouts) in ``env``
        (default: the agent's own environment, maybe wrapped to monitor episodes)."""
        if env is not None and env is not self.wrapped:
            self.wrapped = env
            self.model.set_env(_rescaled(env))
            self.model.env.seed(self.hparams["seed"])  # the random criterion's draws follow --seed
        monitored = self.wrapped or self.env
        self.model.measured_by = None if self.workers is None else (self.workers, monitored)
        rollouts = max(1, math.ceil(total_episodes / self.episodes_per_update))
        for _ in range(rollouts):
            self.model.learn(self.hparams["n_steps"], reset_num_timesteps=False)
            if callback is not None and callback(self) is False:
                break
        return self

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        self.model.save(buffer)
        atomic_write_bytes(path, buffer.getvalue())  # never half an agent file

    @classmethod
    def load(cls, path: str | Path, env: PruningEnv) -> PPOAgent:
        try:
            model = _ppo_class().load(path, env=_rescaled(env), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read PPO agent {path} ({exc.__class__.__name__}: {exc})") from exc
        if model.observation_space.shape != env.observation_space.shape:
            raise CheckpointError(f"{path} was trained on another environment")
        clip_range = model.clip_range(1.0) if callable(model.clip_range) else model.clip_range  # SB3 keeps a schedule
        agent = cls(env, _model=model, n_steps=model.n_steps, batch_size=model.batch_size,
                    learning_rate=model.learning_rate, gamma=model.gamma, n_epochs=model.n_epochs,
                    ent_coef=model.ent_coef, clip_range=float(clip_range),
                    net_arch=tuple(model.policy_kwargs.get("net_arch", (64, 64))), seed=model.seed or 0)
        return agent
