"""REINFORCE LayerAgents: one small Gaussian policy per prunable layer.

Each layer's agent maps that layer's observation to the mean of a Gaussian over a latent
``z``; the keep-ratio is ``min_keep + (1 - min_keep) * sigmoid(z)``. After every batch of
episodes the episode rewards are normalised within the batch (mean 0, std 1) and each
agent takes a REINFORCE step on the log-probabilities of its own choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError, atomic_save


class LayerPolicy(nn.Module):
    """Observation of one layer -> mean of the latent keep-ratio; a learned log-std."""

    def __init__(self, obs_dim: int, hidden: int = 32, init_keep: float = 0.6, min_keep: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        p = (init_keep - min_keep) / (1 - min_keep)
        with torch.no_grad():
            self.net[2].weight.mul_(0.1)
            self.net[2].bias.fill_(float(np.log(p / (1 - p))))
        self.log_std = nn.Parameter(torch.tensor(-0.5))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.net(obs).squeeze(-1), self.log_std.exp())


class ReinforceLayerAgents:
    """One :class:`LayerPolicy` per prunable layer, trained with batch-normalised REINFORCE."""

    name = "reinforce"

    def __init__(
        self,
        env: PruningEnv,
        learning_rate: float = 3e-3,
        batch_episodes: int = 8,
        hidden: int = 32,
        init_keep: float = 0.6,
        entropy_coef: float = 0.0,
        seed: int = 0,
    ):
        self.env = env
        self.hparams = {"learning_rate": learning_rate, "batch_episodes": batch_episodes, "hidden": hidden,
                        "init_keep": init_keep, "entropy_coef": entropy_coef, "seed": seed}
        torch.manual_seed(seed)
        obs_dim = env.observation_space.shape[0]
        self.policies = nn.ModuleList(
            LayerPolicy(obs_dim, hidden, init_keep, env.min_keep) for _ in range(env.n_layers))
        self.optimizer = torch.optim.Adam(self.policies.parameters(), lr=learning_rate)
        self.episodes_done = 0

    def _to_ratio(self, z: torch.Tensor) -> np.ndarray:
        m = self.env.min_keep
        return (m + (1 - m) * torch.sigmoid(z)).detach().numpy().astype(np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        layer = self.env.unwrapped.current_layer
        with torch.no_grad():
            dist = self.policies[layer](torch.as_tensor(observation, dtype=torch.float32))
            z = dist.mean if deterministic else dist.sample()
        return self._to_ratio(z).reshape(1), state

    def learn(self, total_episodes: int, env=None, callback=None) -> ReinforceLayerAgents:
        """Play ``total_episodes`` more episodes in ``env`` (default: the agent's own, maybe
        wrapped), updating after every batch. ``callback(agent)`` runs after each update; ``False`` from it stops."""
        env = env or self.env
        target = self.episodes_done + total_episodes
        while self.episodes_done < target:
            n = min(self.hparams["batch_episodes"], target - self.episodes_done)
            log_probs, entropies, rewards = [], [], []
            for i in range(n):  # episode seeds depend only on (seed, episode number): resumable
                seed = int(np.random.default_rng((self.hparams["seed"], self.episodes_done + i)).integers(2**31))
                obs, info = env.reset(seed=seed)
                episode_logp, episode_entropy = [], []
                done = False
                while not done:
                    dist = self.policies[info["layer"]](torch.as_tensor(obs))
                    z = dist.sample()
                    episode_logp.append(dist.log_prob(z))
                    episode_entropy.append(dist.entropy())
                    obs, reward, terminated, truncated, info = env.step(self._to_ratio(z).reshape(1))
                    done = terminated or truncated
                log_probs.append(torch.stack(episode_logp).sum())
                entropies.append(torch.stack(episode_entropy).sum())
                rewards.append(float(reward))
            r = torch.tensor(rewards)
            advantage = (r - r.mean()) / (r.std() + 1e-8) if len(r) > 1 else torch.zeros_like(r)
            loss = -(torch.stack(log_probs) * advantage).mean()
            loss = loss - self.hparams["entropy_coef"] * torch.stack(entropies).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.episodes_done += n
            if callback is not None and callback(self) is False:
                break
        return self

    def save(self, path: str | Path) -> None:
        atomic_save({"kind": self.name, "hparams": self.hparams, "n_layers": self.env.n_layers,
                     "state_dict": self.policies.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "episodes_done": self.episodes_done, "torch_rng": torch.get_rng_state()},
                    path)

    @classmethod
    def load(cls, path: str | Path, env: PruningEnv) -> ReinforceLayerAgents:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read agent checkpoint {path} ({exc})") from exc
        if ckpt.get("kind") != cls.name or ckpt.get("n_layers") != env.n_layers:
            raise CheckpointError(f"{path} is not a REINFORCE agent for a {env.n_layers}-layer environment")
        agent = cls(env, **ckpt["hparams"])
        agent.policies.load_state_dict(ckpt["state_dict"])
        agent.optimizer.load_state_dict(ckpt["optimizer"])
        agent.episodes_done = ckpt["episodes_done"]
        torch.set_rng_state(ckpt["torch_rng"])  # the same samples as a run that never stopped
        return agent
