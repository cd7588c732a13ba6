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

Width noise (``width_noise=σ > 0``): a mask of n independent Bernoulli draws keeps almost the
same number of units every episode (the count's spread is about sqrt(n)/2 units), so the agents
explore which units stay but hardly how many. With width noise each layer's agent also draws
one shift per episode, ``ε ~ N(μ, σ)``, added to all its logits before the mask is drawn: the
whole layer keeps more or fewer units together, as a per-layer policy's keep-ratio would.
The learnable mean ``μ`` (one per layer) takes a REINFORCE step on the shift's
log-probability, the logits on the mask's; the sample is the mask with ``ε`` appended.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agents.allocation import global_threshold_units, meet_budget
from agents.reinforce import BatchReinforce
from prune_env.config import CHANNEL_INITS as INITS
from prune_env.env import PruningEnv, mask_scores


class ShiftedBernoulli:
    """Bernoulli keep masks whose logits share one Gaussian shift per draw.

    A sample is the 0/1 mask with the shift appended; its log-probability is the shift's
    plus the mask's given the shift. :attr:`probs` are the keep probabilities at the mean
    shift, :meth:`probs_given` those a sample was drawn from."""

    def __init__(self, logits: torch.Tensor, shift_mean: torch.Tensor, shift_std: float):
        self.logits, self.shift = logits, torch.distributions.Normal(shift_mean, shift_std)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits + self.shift.mean)

    def probs_given(self, sample: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits + sample[-1])

    def mode(self) -> torch.Tensor:
        return torch.cat([(self.probs >= 0.5).float(), self.shift.mean.detach().reshape(1)])

    def sample(self) -> torch.Tensor:
        shift = self.shift.sample()
        mask = torch.distributions.Bernoulli(logits=self.logits + shift).sample()
        return torch.cat([mask, shift.reshape(1)]).detach()

    def log_prob(self, sample: torch.Tensor) -> torch.Tensor:
        mask, shift = sample[:-1], sample[-1]
        return torch.cat([torch.distributions.Bernoulli(logits=self.logits + shift).log_prob(mask),
                          self.shift.log_prob(shift).reshape(1)])

    def entropy(self) -> torch.Tensor:
        """The shift's entropy and the masks' at the mean shift (a lower bound on the joint's)."""
        masks = torch.distributions.Bernoulli(logits=self.logits + self.shift.mean)
        return torch.cat([masks.entropy(), self.shift.entropy().reshape(1)])


class ChannelAgent(nn.Module):
    """One logit per unit of a layer; Bernoulli keep probabilities (with ``width_noise``, a
    learnable mean shift of all the layer's logits, drawn per episode)."""

    def __init__(self, logits: torch.Tensor, width_noise: float = 0.0):
        super().__init__()
        self.logits = nn.Parameter(logits.detach().float().clone())
        self.width_noise = float(width_noise)
        if self.width_noise > 0:
            self.shift_mean = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.distributions.Bernoulli | ShiftedBernoulli:
        if self.width_noise > 0:
            return ShiftedBernoulli(self.logits, self.shift_mean, self.width_noise)
        return torch.distributions.Bernoulli(logits=self.logits)

    def keep_probabilities(self) -> torch.Tensor:
        """The units' keep probabilities (at the mean shift)."""
        return self().probs


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
        return logits_keeping(env, kept, kept_start_probability(init_keep))
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


def kept_start_probability(init_keep: float | None) -> float:
    """The keep probability ``global`` and ``best`` start their kept units at."""
    return 0.9 if init_keep is None else init_keep


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
        width_noise: float = 0.0,
        seed: int = 0,
    ):
        if not width_noise >= 0:
            raise ValueError(f"width_noise must be at least 0, got {width_noise}")
        hparams = {"learning_rate": learning_rate, "batch_episodes": batch_episodes, "init": init,
                   "init_keep": init_keep, "importance_scale": importance_scale, "entropy_coef": entropy_coef,
                   "width_noise": width_noise, "seed": seed}
        torch.manual_seed(seed)
        base = env.unwrapped
        policies = nn.ModuleList(ChannelAgent(logits, width_noise)
                                 for logits in initial_logits(base, init, init_keep, importance_scale))
        self._width = base.action_space.shape[0]
        super().__init__(env, policies, hparams)

    def _starts_at_best(self) -> bool:
        return self.hparams["init"] == "best"

    def _playing(self, kept: list[torch.Tensor]):
        def mask(layer: int, obs) -> np.ndarray:
            scores = np.zeros(self._width, dtype=np.float32)
            scores[kept[layer]] = 1.0
            return scores
        return mask

    def _start_at(self, report: dict) -> None:
        keep = kept_start_probability(self.hparams["init_keep"])
        kept = [torch.as_tensor(k) for k in report["kept_units"]]
        with torch.no_grad():
            for policy, logits in zip(self.policies, logits_keeping(self.env.unwrapped, kept, keep), strict=True):
                policy.logits.copy_(logits)
                if policy.width_noise > 0:
                    policy.shift_mean.zero_()

    def _distribution(self, layer, obs):
        return self.policies[layer]()

    def _mode(self, dist):
        return dist.mode() if isinstance(dist, ShiftedBernoulli) else (dist.probs >= 0.5).float()

    def _action(self, layer, sample, dist):
        if isinstance(dist, ShiftedBernoulli):
            sample, probs = sample[:-1], dist.probs_given(sample)
        else:
            probs = dist.probs
        scores = np.zeros(self._width, dtype=np.float32)
        scores[:len(sample)] = mask_scores(sample.numpy(), probs.detach().numpy())
        return scores

    def keep_probabilities(self) -> list[np.ndarray]:
        """Every layer's keep probabilities (at the mean shift)."""
        with torch.no_grad():
            return [p.keep_probabilities().numpy() for p in self.policies]
