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

from agents.allocation import heuristic_starts, meet_budget
from agents.parallel import play_episodes
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
        """Where the search started, when the agent chose it by reward (``init: best`` of the channel agents,
        ``init_keep: best`` of the per-layer ones)."""
        self.workers = None
        """:class:`~agents.parallel.EpisodeWorkers` that measure each batch in parallel (None: serially)."""

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
        wrapped), updating after every batch. ``callback(agent)`` runs after each update; ``False`` from it stops.
        With :attr:`workers` set, each batch's networks are measured in parallel (same results)."""
        env = env or self.env
        if self._starts_at_best() and self.episodes_done == 0 and total_episodes > 0:
            total_episodes -= self._play_heuristic_starts(env, total_episodes)
            if callback is not None and callback(self) is False:
                return self
        target = self.episodes_done + total_episodes
        while self.episodes_done < target:
            n = min(self.hparams["batch_episodes"], target - self.episodes_done)
            # episode seeds depend only on (seed, episode number): resumable
            seeds = [int(np.random.default_rng((self.hparams["seed"], self.episodes_done + i)).integers(2**31))
                     for i in range(n)]
            episodes = [_Episode(self) for _ in range(n)]
            reports = play_episodes(env, [e.act for e in episodes], seeds, self.workers)
            log_probs = [torch.stack(e.log_probs).sum() for e in episodes]
            entropies = [torch.stack(e.entropies).sum() for e in episodes]
            r = torch.tensor([float(report["reward"]) for report in reports])
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

    # ---- starting at the best heuristic's network (init: best) --------------------------
    def _starts_at_best(self) -> bool:
        """Whether the first episodes play the single-shot heuristics' networks and the
        policies then start at the best of them by reward."""
        return False

    def _heuristic_starts(self) -> dict[str, list[torch.Tensor]]:
        """The heuristics' networks this agent can play, as kept units per layer."""
        return heuristic_starts(self.env.unwrapped, by_widths=self.action_mode == "ratio")

    def _playing(self, kept: list[torch.Tensor]):
        """An episode's ``act(layer, obs)`` that plays the network keeping ``kept``."""
        raise NotImplementedError

    def _start_at(self, report: dict) -> None:
        """Move the policies to the network of an episode's report."""
        raise NotImplementedError

    def _play_heuristic_starts(self, env, limit: int) -> int:
        """Play (at most ``limit`` of) the heuristics' networks as the search's first
        episodes, start the policies at the best by reward (the first on a tie), record it in
        :attr:`start`; the number of episodes played."""
        starts = list(self._heuristic_starts().items())[:limit]
        reports = play_episodes(env, [self._playing(kept) for _, kept in starts], [0] * len(starts), self.workers)
        rewards = [float(report["reward"]) for report in reports]
        best = int(np.argmax(rewards))
        self._start_at(reports[best])
        self.start = {"network": starts[best][0],
                      "rewards": {name: r for (name, _), r in zip(starts, rewards, strict=True)}}
        self.episodes_done += len(starts)
        return len(starts)

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        atomic_save({"kind": self.name, "hparams": self.hparams, "n_layers": self.env.n_layers,
                     "state_dict": self.policies.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "episodes_done": self.episodes_done, "start": self.start}, path)

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
        if "torch_rng" in ckpt:  # agent files written before the search checkpoint kept every generator's state
            torch.set_rng_state(ckpt["torch_rng"])
        return agent


class _Episode:
    """One episode's sampled actions, with their log-probabilities and entropies."""

    def __init__(self, agent: BatchReinforce):
        self.agent = agent
        self.log_probs: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []

    def act(self, layer: int, obs: np.ndarray) -> np.ndarray:
        dist = self.agent._distribution(layer, torch.as_tensor(obs))
        sample = dist.sample()
        self.log_probs.append(dist.log_prob(sample).sum())
        self.entropies.append(dist.entropy().sum())
        return self.agent._action(layer, sample, dist)


class LayerPolicy(nn.Module):
    """Observation of one layer -> mean of the latent keep-ratio; a learned log-std."""

    def __init__(self, obs_dim: int, hidden: int = 32, init_keep: float = 0.6, min_keep: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[2].weight.mul_(0.1)
        self.start_at(init_keep, min_keep)
        self.log_std = nn.Parameter(torch.tensor(-0.5))

    def start_at(self, keep: float, min_keep: float) -> None:
        """Centre the keep-ratio the policy chooses on average at ``keep`` (the output bias)."""
        p = float(np.clip((keep - min_keep) / (1 - min_keep), 0.02, 0.98))
        with torch.no_grad():
            self.net[2].bias.fill_(float(np.log(p / (1 - p))))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.net(obs).squeeze(-1), self.log_std.exp())


START_AT_BEST = "best"
"""``init_keep`` that starts the per-layer policies at the best single-shot heuristic's widths."""


def starting_keep_ratios(env: PruningEnv, init_keep: float | str | None) -> np.ndarray:
    """The keep-ratio each layer's untrained policy chooses on average: ``init_keep`` in
    every layer, or (``None``) the budget's uniform keep-ratio, so that the first episodes
    spend the budget evenly instead of leaving the budget clamp to fill the last layers
    (with ``"best"`` too, until the heuristics' networks are measured)."""
    if init_keep is None or init_keep == START_AT_BEST:
        return meet_budget(env, np.ones(env.n_layers))
    if isinstance(init_keep, str) or not 0 < init_keep < 1:
        raise ValueError(f"init_keep must lie in (0, 1), be null or {START_AT_BEST!r}; got {init_keep!r}")
    return np.full(env.n_layers, float(init_keep))


class ReinforceLayerAgents(BatchReinforce):
    """One :class:`LayerPolicy` per prunable layer: a keep-ratio per layer."""

    name = "reinforce"

    def __init__(
        self,
        env: PruningEnv,
        learning_rate: float = 3e-3,
        batch_episodes: int = 8,
        hidden: int = 32,
        init_keep: float | str | None = 0.6,
        entropy_coef: float = 0.0,
        seed: int = 0,
    ):
        hparams = {"learning_rate": learning_rate, "batch_episodes": batch_episodes, "hidden": hidden,
                   "init_keep": init_keep, "entropy_coef": entropy_coef, "seed": seed}
        torch.manual_seed(seed)
        obs_dim = env.observation_space.shape[0]
        policies = nn.ModuleList(LayerPolicy(obs_dim, hidden, float(keep), env.min_keep)
                                 for keep in starting_keep_ratios(env, init_keep))
        super().__init__(env, policies, hparams)

    def _starts_at_best(self) -> bool:
        return self.hparams["init_keep"] == START_AT_BEST

    def _playing(self, kept: list[torch.Tensor]):
        ratios = [len(k) / int(u) for k, u in zip(kept, self.env.unwrapped.units, strict=True)]
        return lambda layer, obs: np.array([ratios[layer]], dtype=np.float32)

    def _start_at(self, report: dict) -> None:
        for policy, keep in zip(self.policies, report["keep_ratios"], strict=True):
            policy.start_at(float(keep), self.env.min_keep)

    def _distribution(self, layer, obs):
        return self.policies[layer](obs)

    def _mode(self, dist):
        return dist.mean

    def _action(self, layer, sample, dist):
        m = self.env.min_keep
        return (m + (1 - m) * torch.sigmoid(sample)).detach().numpy().astype(np.float32).reshape(1)
