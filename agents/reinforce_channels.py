"""REINFORCE channel agents: the seed's LayerAgents, which choose the units themselves.

Each prunable layer has one agent holding a learnable logit per unit; a sigmoid turns
the logits into keep probabilities, and every episode draws a Bernoulli keep mask per
layer from them (the published form is DECORE, Alwani et al., CVPR 2022). The
environment plays in ``mask`` mode: it brings each mask into the FLOPs budget, trimming
the least probable kept units or filling with the most probable dropped ones
(:func:`prune_env.env.mask_scores`). REINFORCE updates the logits on the log-probability
of the sampled masks with rewards normalised per batch, as
:class:`~agents.reinforce.ReinforceLayerAgents` does.

Initialisation (``init``):
- ``uniform``: every unit of a layer starts at the keep-ratio of the ``uniform``
  allocation that meets the budget (``init_keep`` instead, when given);
- ``importance``: the same mean logit, plus ``importance_scale`` times the unit's
  standardised criterion score within its layer (important units start more likely);
- ``keep``: DECORE's all-keep bias, every unit at ``init_keep`` (0.95 when not given); the
  budget then trims by the criterion;
- ``global``: start at a heuristic's network: one global threshold on the criterion's
  per-layer-normalised scores meets the budget (the rule of the ``l1`` and ``ngf``
  heuristics); the units it keeps start at ``init_keep`` (0.9 when not given), the
  others at one minus that;
- ``best``: start, as ``global`` does, at the network of the best single-shot heuristic
  (``uniform`` with the env's criterion, ``l1``, ``ngf``) by the search's own reward: the
  first episodes of the search play those networks (they count in its episode budget,
  and are candidates like any other), then the agent starts from the best of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agents.allocation import global_threshold_allocation, meet_budget
from agents.parallel import play_episodes
from agents.reinforce import BatchReinforce
from prune_env.config import CHANNEL_INITS as INITS
from prune_env.env import PruningEnv, mask_scores, network_key
from prune_env.surgery import top_units


class ChannelAgent(nn.Module):
    """One logit per unit of a layer; Bernoulli keep probabilities."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.detach().float().clone())

    def forward(self) -> torch.distributions.Bernoulli:
        return torch.distributions.Bernoulli(logits=self.logits)


def initial_logits(env: PruningEnv, init: str, init_keep: float | None, importance_scale: float) -> list[torch.Tensor]:
    """The starting logits of every layer's agent (see the module's docstring)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if init_keep is not None and not 0 < init_keep < 1:
        raise ValueError(f"init_keep must lie in (0, 1), got {init_keep}")
    if init in ("global", "best"):
        if init_keep is not None and init_keep <= 0.5:  # the kept units must be the likelier ones
            raise ValueError(f"init {init!r} starts the units it keeps at init_keep, which must lie in (0.5, 1); "
                             f"got {init_keep}")
        kept = global_threshold_units(env, env.criterion)
        return logits_keeping(env, kept, 0.9 if init_keep is None else init_keep)
    if init == "keep":
        keep = np.full(env.n_layers, 0.95 if init_keep is None else init_keep)
    elif init_keep is not None:
        keep = np.full(env.n_layers, init_keep)
    else:
        keep = meet_budget(env, np.ones(env.n_layers))
    keep = np.clip(keep, 0.02, 0.98)
    logits = []
    for i, p in enumerate(keep):
        base = torch.full((int(env.units[i]),), float(np.log(p / (1 - p))))
        if init == "importance" and len(base) > 1:
            scores = env.pruner.keep_scores(i, env.criterion)
            base = base + importance_scale * (scores - scores.mean()) / (scores.std() + 1e-12)
        logits.append(base)
    return logits


def global_threshold_units(env: PruningEnv, criterion: str) -> list[torch.Tensor]:
    """The units one global threshold on per-layer-normalised ``criterion`` scores keeps at
    the budget (every unit without a budget): the ``l1`` / ``ngf`` heuristic's network."""
    scores = [env.pruner.keep_scores(i, criterion) for i in range(env.n_layers)]
    counts = env.units if env.budget is None else global_threshold_allocation(env, scores)
    return [top_units(s, int(n)) for s, n in zip(scores, counts, strict=True)]


def heuristic_starts(env: PruningEnv) -> dict[str, list[torch.Tensor]]:
    """The distinct networks of the single-shot heuristics, as kept units per layer:
    ``uniform`` (the env's criterion picks the units), ``l1`` and ``ngf``."""
    uniform = env.pruner.keep_indices(env.pruner.keep_counts(meet_budget(env, np.ones(env.n_layers))), env.criterion)
    starts: dict[tuple, tuple[str, list[torch.Tensor]]] = {}
    for name, kept in [("uniform", uniform), ("l1", global_threshold_units(env, "l1")),
                       ("ngf", global_threshold_units(env, "activation"))]:
        starts.setdefault(network_key(None, [sorted(k.tolist()) for k in kept]), (name, kept))
    return dict(starts.values())


def logits_keeping(env: PruningEnv, kept: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Logits that keep units ``kept[i]`` of layer i with probability ``keep`` and drop the
    others with the same probability."""
    a = float(np.log(keep / (1 - keep)))
    logits = []
    for i, units in enumerate(kept):
        layer = torch.full((int(env.units[i]),), -a)
        layer[units] = a
        logits.append(layer)
    return logits


class ReinforceChannelAgents(BatchReinforce):
    """One :class:`ChannelAgent` per prunable layer: which units stay."""

    name = "reinforce_channels"
    action_mode = "mask"

    def __init__(
        self,
        env: PruningEnv,
        learning_rate: float = 0.1,
        batch_episodes: int = 8,
        init: str = "best",
        init_keep: float | None = None,
        importance_scale: float = 1.0,
        entropy_coef: float = 0.0,
        seed: int = 0,
    ):
        hparams = {"learning_rate": learning_rate, "batch_episodes": batch_episodes, "init": init,
                   "init_keep": init_keep, "importance_scale": importance_scale, "entropy_coef": entropy_coef,
                   "seed": seed}
        torch.manual_seed(seed)
        base = env.unwrapped
        policies = nn.ModuleList(ChannelAgent(logits) for logits in initial_logits(base, init, init_keep, importance_scale))
        self._width = base.action_space.shape[0]
        super().__init__(env, policies, hparams)

    def learn(self, total_episodes: int, env=None, callback=None):
        """As :meth:`BatchReinforce.learn`; with ``init: best`` the first episodes of the
        first call play the heuristics' networks and the agent starts from the best."""
        if self.hparams["init"] == "best" and self.episodes_done == 0 and total_episodes > 0:
            played = self._play_heuristic_starts(env or self.env, total_episodes)
            total_episodes -= played
            if callback is not None and callback(self) is False:
                return self
        return super().learn(total_episodes, env=env, callback=callback)

    def _play_heuristic_starts(self, env, limit: int) -> int:
        starts = list(heuristic_starts(self.env.unwrapped).items())[:limit]

        def keeping(kept: list[torch.Tensor]):
            def mask(layer: int, obs) -> np.ndarray:
                scores = np.zeros(self._width, dtype=np.float32)
                scores[kept[layer]] = 1.0
                return scores
            return mask

        reports = play_episodes(env, [keeping(kept) for _, kept in starts], [0] * len(starts), self.workers)
        rewards = {name: (float(report["reward"]), [torch.as_tensor(k) for k in report["kept_units"]])
                   for (name, _), report in zip(starts, reports, strict=True)}
        best = max(rewards, key=lambda n: rewards[n][0])  # the first on a tie
        keep = 0.9 if self.hparams["init_keep"] is None else self.hparams["init_keep"]
        with torch.no_grad():
            for policy, logits in zip(self.policies, logits_keeping(self.env.unwrapped, rewards[best][1], keep),
                                      strict=True):
                policy.logits.copy_(logits)
        self.start = {"network": best, "rewards": {n: r for n, (r, _) in rewards.items()}}
        self.episodes_done += len(rewards)
        return len(rewards)

    def _distribution(self, layer, obs):
        return self.policies[layer]()

    def _mode(self, dist):
        return (dist.probs >= 0.5).float()

    def _action(self, layer, sample, dist):
        scores = np.zeros(self._width, dtype=np.float32)
        scores[:len(sample)] = mask_scores(sample.numpy(), dist.probs.detach().numpy())
        return scores

    def keep_probabilities(self) -> list[np.ndarray]:
        """Every layer's keep probabilities."""
        with torch.no_grad():
            return [torch.sigmoid(p.logits).numpy() for p in self.policies]
