"""REINFORCE LayerAgents: one small policy per prunable layer, trained on batch-normalised
episode rewards.

:class:`ReinforceLayerAgents` chooses a keep-ratio per layer: each layer's agent maps that
layer's observation to the mean of a Gaussian over a latent ``z``, and the keep-ratio is
``min_keep + (1 - min_keep) * sigmoid(z)``; a criterion then picks the units.
:class:`~agents.reinforce_channels.ReinforceChannelAgents` chooses the units themselves.
Both share :class:`BatchReinforce`: after every batch of episodes the rewards are
normalised within the batch (mean 0, std 1) and each agent takes a REINFORCE step on the
log-probabilities of its own choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune_env.env import PruningEnv
from target_models.checkpoints import CheckpointError, atomic_save


class BatchReinforce:
    """One policy per prunable layer (``self.policies``), REINFORCE with rewards normalised
    per batch of episodes, checkpoints that resume with the same samples. Subclasses say
    how a layer's policy turns an observation into a distribution and a sample into an
    action."""

    name = "batch_reinforce"
    action_mode = "ratio"
    """The environment's action mode this agent plays (:data:`prune_env.env.ACTION_MODES`)."""

    def __init__(self, env: PruningEnv, policies: nn.ModuleList, hparams: dict):
        if env.unwrapped.action_mode != self.action_mode:
            raise ValueError(f"{self.name} plays action_mode={self.action_mode!r}; build the environment with it")
        self.env, self.hparams, self.policies = env, hparams, policies
        self.optimizer = torch.optim.Adam(self.policies.parameters(), lr=hparams["learning_rate"])
        self.episodes_done = 0
        self.start: dict | None = None
        """Where the search started, when the agent chose it by reward (channel agents' ``init: best``)."""

    # ---- what a subclass defines -----------------------------------------------------
    def _distribution(self, layer: int, obs: torch.Tensor) -> torch.distributions.Distribution:
        raise NotImplementedError

    def _action(self, layer: int, sample: torch.Tensor, dist: torch.distributions.Distribution) -> np.ndarray:
        raise NotImplementedError

    def _mode(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        """The deterministic choice of a distribution."""
        raise NotImplementedError

    # ---- acting and learning ---------------------------------------------------------
    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        layer = self.env.unwrapped.current_layer
        with torch.no_grad():
            dist = self._distribution(layer, torch.as_tensor(observation, dtype=torch.float32))
            sample = self._mode(dist) if deterministic else dist.sample()
        return self._action(layer, sample, dist), state

    def learn(self, total_episodes: int, env=None, callback=None):
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
                    layer = info["layer"]
                    dist = self._distribution(layer, torch.as_tensor(obs))
                    sample = dist.sample()
                    episode_logp.append(dist.log_prob(sample).sum())
                    episode_entropy.append(dist.entropy().sum())
                    obs, reward, terminated, truncated, info = env.step(self._action(layer, sample, dist))
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

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        atomic_save({"kind": self.name, "hparams": self.hparams, "n_layers": self.env.n_layers,
                     "state_dict": self.policies.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "episodes_done": self.episodes_done, "start": self.start, "torch_rng": torch.get_rng_state()},
                    path)

    @classmethod
    def load(cls, path: str | Path, env: PruningEnv):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read agent checkpoint {path} ({exc})") from exc
        if ckpt.get("kind") != cls.name or ckpt.get("n_layers") != env.n_layers:
            raise CheckpointError(f"{path} is not a {cls.name} agent for a {env.n_layers}-layer environment")
        agent = cls(env, **ckpt["hparams"])
        try:
            agent.policies.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path} was saved for a network of other widths ({exc.__class__.__name__})") from exc
        agent.optimizer.load_state_dict(ckpt["optimizer"])
        agent.episodes_done = ckpt["episodes_done"]
        agent.start = ckpt.get("start")
        torch.set_rng_state(ckpt["torch_rng"])  # the same samples as a run that never stopped
        return agent


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


class ReinforceLayerAgents(BatchReinforce):
    """One :class:`LayerPolicy` per prunable layer: a keep-ratio per layer."""

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
        hparams = {"learning_rate": learning_rate, "batch_episodes": batch_episodes, "hidden": hidden,
                   "init_keep": init_keep, "entropy_coef": entropy_coef, "seed": seed}
        torch.manual_seed(seed)
        obs_dim = env.observation_space.shape[0]
        policies = nn.ModuleList(LayerPolicy(obs_dim, hidden, init_keep, env.min_keep) for _ in range(env.n_layers))
        super().__init__(env, policies, hparams)

    def _distribution(self, layer, obs):
        return self.policies[layer](obs)

    def _mode(self, dist):
        return dist.mean

    def _action(self, layer, sample, dist):
        m = self.env.min_keep
        return (m + (1 - m) * torch.sigmoid(sample)).detach().numpy().astype(np.float32).reshape(1)
