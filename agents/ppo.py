"""PPO from stable-baselines3 on the pruning environment.

The environment's keep-ratio range ``[min_keep, 1]`` is rescaled to ``[-1, 1]`` with
Gymnasium's ``RescaleAction``, so the Gaussian policy's outputs (clipped to ``[-1, 1]`` by
SB3) map linearly onto the keep-ratio range.
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np

from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError


def _rescaled(env: gym.Env) -> gym.Env:
    one = np.ones(1, dtype=np.float32)
    return gym.wrappers.RescaleAction(env, min_action=-one, max_action=one)


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
        from stable_baselines3 import PPO

        self.env = env
        layers = env.n_layers
        n_steps = n_steps or layers * max(8, math.ceil(batch_size / layers))
        n_steps = layers * math.ceil(n_steps / layers)  # whole episodes per rollout
        self.hparams = {"learning_rate": learning_rate, "gamma": gamma, "clip_range": clip_range,
                        "n_epochs": n_epochs, "batch_size": batch_size, "n_steps": n_steps,
                        "ent_coef": ent_coef, "net_arch": list(net_arch), "seed": seed}
        self.wrapped: gym.Env | None = None
        self.model = _model or PPO(
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
        rollouts = max(1, math.ceil(total_episodes / self.episodes_per_update))
        for _ in range(rollouts):
            self.model.learn(self.hparams["n_steps"], reset_num_timesteps=False)
            if callback is not None and callback(self) is False:
                break
        return self

    def save(self, path: str | Path) -> None:
        self.model.save(path)

    @classmethod
    def load(cls, path: str | Path, env: PruningEnv) -> PPOAgent:
        from stable_baselines3 import PPO

        try:
            model = PPO.load(path, env=_rescaled(env), device="cpu")
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
