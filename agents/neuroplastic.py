"""Neuroplastic Expansion (Liu et al., ICLR 2025) for stable-baselines3's TD3: the actor and
critic start small and sparse and grow while the agent learns.

:class:`TopologyCallback` works on a TD3 model through stable-baselines3's callback hooks:

- ``dense``: no masks (the baseline).
- ``static``: a random Erdős–Rényi mask at ``final_sparsity``, fixed (``static_topo``).
- ``ne``: the small-to-large scheduler. Every ``delta`` steps, until ``stop_fraction`` of
  training, the target sparsity falls linearly from ``initial_sparsity`` to
  ``final_sparsity``; dormant neurons (score at most ``tau``) release their incoming
  connections; a share ``zeta`` (cosine-decayed) of the active connections with the
  smallest magnitude is pruned; and the same number plus what the schedule adds is grown
  where the potential gradients (the gradients of inactive weights, from a dense backward
  pass on a replay batch) are largest. Grown weights start at zero or LeCun-normal.
- ``ngf``: our NGF pruning: at ``ngf_at`` of training, every hidden layer keeps its
  ``ngf_keep`` most active units (mean activation on a replay batch); fixed after.

A neuron's dormancy score is its mean absolute activation over a batch divided by its
layer's mean. With ``experience_review``, a dormant ratio above ``review_threshold`` widens
the replay window from ``window_min`` to ``window_max`` recent transitions (older
experience is sampled again); without it, replay is uniform over the whole buffer.

Departures from the official code (github.com/torressliu/neuroplastic-expansion), whose
TD3 path differs from the paper: there growth adds a constant share of the free space per
update and the dormant-neuron step reduces to magnitude pruning; here the sparsity falls
linearly and dormant neurons are detected by their activations, as the paper describes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn
from torch.nn import functional as F

from agents.sparse_masks import SparseLayers, erdos_renyi_densities

METHODS = ("dense", "static", "ne", "ngf")
GROWN_INIT = ("zero", "lecun")


@dataclass
class NEConfig:
    """Settings of the topology methods (the paper's defaults where it gives them)."""

    method: str = "ne"
    """``dense``, ``static``, ``ne`` or ``ngf``."""
    initial_sparsity: float = 0.8
    final_sparsity: float = 0.25
    delta: int = 1000
    """Environment steps between topology updates."""
    stop_fraction: float = 0.8
    """Share of training after which the topology stays fixed."""
    zeta: float = 0.2
    """Share of active connections pruned (and regrown) at the first update; decays by a cosine to 0."""
    grown_init: str = "zero"
    """Grown weights start at ``zero`` or ``lecun`` (normal, std 1/sqrt(fan_in))."""
    tau: float = 0.025
    """Dormancy threshold on a neuron's normalised mean activation."""
    dormant_pruning: bool = True
    """``ne``: dormant neurons release their incoming connections at each update."""
    experience_review: bool = False
    review_threshold: float = 0.1
    """Dormant ratio above which the replay window widens."""
    window_min: int = 50_000
    window_max: int = 1_000_000
    ngf_at: float = 0.3
    """``ngf``: share of training after which the units are pruned."""
    ngf_keep: float = 0.85
    """``ngf``: share of each hidden layer's units kept (0.85 leaves about 25% of the weights zero)."""
    batch_size: int = 256
    """Replay batch for potential gradients and dormancy scores."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.grown_init not in GROWN_INIT:
            raise ValueError(f"grown_init must be one of {GROWN_INIT}, got {self.grown_init!r}")
        for name in ("initial_sparsity", "final_sparsity"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("stop_fraction", "ngf_at", "ngf_keep"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.method == "ne" and self.final_sparsity > self.initial_sparsity:
            raise ValueError(f"ne grows its networks: final_sparsity ({self.final_sparsity}) must not exceed "
                             f"initial_sparsity ({self.initial_sparsity})")
        if self.tau < 0 or not 0 <= self.review_threshold <= 1:
            raise ValueError(f"tau must be at least 0 and review_threshold in [0, 1], got {self.tau}, "
                             f"{self.review_threshold}")
        if not 0 <= self.zeta < 1:
            raise ValueError(f"zeta must lie in [0, 1), got {self.zeta}")
        if self.delta < 1 or self.batch_size < 1:
            raise ValueError("delta and batch_size must be at least 1")
        if not 1 <= self.window_min <= self.window_max:
            raise ValueError(f"need 1 <= window_min <= window_max, got {self.window_min}, {self.window_max}")

    def to_dict(self) -> dict:
        return asdict(self)


class WindowReplayBuffer(ReplayBuffer):
    """A replay buffer that samples from its ``window`` most recent transitions (all of
    them when ``window`` is None, the default: plain uniform replay)."""

    window: int | None = None

    def sample(self, batch_size: int, env=None):
        size = self.buffer_size if self.full else self.pos
        if self.window is None or self.window >= size:
            return super().sample(batch_size, env=env)
        if self.optimize_memory_usage:
            raise ValueError("a replay window needs optimize_memory_usage=False")
        offsets = np.random.randint(1, self.window + 1, size=batch_size)
        return self._get_samples((self.pos - offsets) % self.buffer_size, env=env)


def td3_networks(model) -> list[tuple[nn.Sequential, nn.Sequential | None, torch.optim.Optimizer]]:
    """(network, its target network, its optimiser) for the actor and each Q head of a TD3 model."""
    policy = model.policy
    nets = [(policy.actor.mu, policy.actor_target.mu, policy.actor.optimizer)]
    nets += [(q, qt, policy.critic.optimizer)
             for q, qt in zip(policy.critic.q_networks, policy.critic_target.q_networks, strict=True)]
    return nets


def hidden_pairs(net: nn.Sequential) -> list[tuple[int, int]]:
    """(index of a Linear, index of the activation after it) for every hidden layer (a Linear
    followed by an activation and, later, by another Linear)."""
    modules = list(net)
    last = max(i for i, m in enumerate(modules) if isinstance(m, nn.Linear))
    return [(i, i + 1) for i, m in enumerate(modules[:last])
            if isinstance(m, nn.Linear) and not isinstance(modules[i + 1], nn.Linear)]


def td3_losses(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """TD3's critic loss (clipped double-Q with target smoothing) and actor loss on a replay
    batch: what the potential gradients are taken of."""
    with torch.no_grad():
        noise = (torch.randn_like(data.actions) * model.target_policy_noise).clamp(-model.target_noise_clip,
                                                                                 model.target_noise_clip)
        next_actions = (model.actor_target(data.next_observations) + noise).clamp(-1, 1)
        next_q = torch.cat(model.critic_target(data.next_observations, next_actions), dim=1).min(1, keepdim=True)[0]
        discounts = data.discounts if getattr(data, "discounts", None) is not None else model.gamma
        target = data.rewards + (1 - data.dones) * discounts * next_q
    critic_loss = sum(F.mse_loss(q, target) for q in model.critic(data.observations, data.actions))
    actor_loss = -model.critic.q1_forward(data.observations, model.actor(data.observations)).mean()
    return critic_loss, actor_loss


@torch.no_grad()
def activation_scores(model, data) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """For every hidden layer of the actor and the Q heads: (network index, Linear index,
    mean |activation| per unit, share of positive activations per unit) on a replay batch."""
    captured: dict[tuple[int, int], torch.Tensor] = {}
    handles = []
    for n, (net, _, _) in enumerate(td3_networks(model)):
        for lin, act in hidden_pairs(net):
            handles.append(net[act].register_forward_hook(
                lambda _m, _i, out, key=(n, lin): captured.__setitem__(key, out.detach())))
    try:
        model.actor(data.observations)
        model.critic(data.observations, data.actions)
    finally:
        for h in handles:
            h.remove()
    return [(n, lin, out.abs().mean(0), (out > 0).float().mean(0)) for (n, lin), out in sorted(captured.items())]


def dormancy(scores: list, tau: float) -> dict:
    """Dormant ratio (units whose normalised mean activation is at most ``tau``) and FAU
    (share of positive activations over the batch and the units), for actor and critic."""
    out = {}
    for part, keep in (("actor", lambda n: n == 0), ("critic", lambda n: n > 0)):
        chosen = [s for s in scores if keep(s[0])]
        dormant = sum(int((m / (m.mean() + 1e-9) <= tau).sum()) for _, _, m, _ in chosen)
        units = sum(m.numel() for _, _, m, _ in chosen)
        out[f"{part}_dormant_ratio"] = dormant / units
        out[f"{part}_fau"] = float(sum(float(p.sum()) for _, _, _, p in chosen) / units)
    return out


class TopologyCallback(BaseCallback):
    """Keeps a TD3 model's masks and runs its topology method (see the module docstring).

    ``total_timesteps`` is the whole run's length (schedules are shares of it). ``state``
    is a saved :meth:`state` to resume from. ``on_step`` is called with the callback after
    every environment step, before stable-baselines3 stores that step's transition and
    trains on it (evaluation, progress); ``on_rollout_start`` at the start of every rollout,
    when every step so far is stored and trained on (checkpoints).
    """

    def __init__(self, config: NEConfig, total_timesteps: int, seed: int = 0, state: dict | None = None,
                 on_step=None, on_rollout_start=None):
        super().__init__()
        self.config, self.total = config, total_timesteps
        self.rng = np.random.default_rng(seed)
        self.sparse: SparseLayers | None = None
        self.index: list[tuple[int, int]] = []  # (network, Linear index) of every masked layer
        self.updates, self.ngf_done, self.last_dormancy = 0, False, {}
        self._saved = state
        self._on_step_hook = on_step
        self._on_rollout_hook = on_rollout_start

    # ---- set-up --------------------------------------------------------------------------
    def _on_training_start(self) -> None:
        if self.config.method == "dense" or self.sparse is not None:
            return
        if self._saved is not None and self._saved["masks"] is None:
            raise ValueError("the checkpoint holds no masks; it was saved by a dense run")
        layers, targets, optimizers = [], [], []
        for n, (net, target, opt) in enumerate(td3_networks(self.model)):
            for i, m in enumerate(net):
                if isinstance(m, nn.Linear):
                    self.index.append((n, i))
                    layers.append(m)
                    targets.append(target[i])
            optimizers.append(opt)
        optimizers = list(dict.fromkeys(optimizers))
        if self._saved is not None:  # resume: the saved masks, never a fresh draw
            self.sparse = SparseLayers(layers, optimizers, targets, masks=self._saved["masks"]["masks"])
            self.updates, self.ngf_done = self._saved["updates"], self._saved["ngf_done"]
            self.rng.bit_generator.state = self._saved["rng"]
            return
        start = {"ne": self.config.initial_sparsity, "static": self.config.final_sparsity}.get(self.config.method, 0.0)
        densities = erdos_renyi_densities([tuple(m.weight.shape) for m in layers], start)
        self.sparse = SparseLayers(layers, optimizers, targets, densities, self.rng)
        if isinstance(self.model.replay_buffer, WindowReplayBuffer) and self.config.experience_review:
            self.model.replay_buffer.window = self.config.window_min  # the pickled buffer keeps its window

    def state(self) -> dict:
        """What a checkpoint needs to resume the topology (masks, counters, random state)."""
        return {"masks": self.sparse.state_dict() if self.sparse else None, "updates": self.updates,
                "ngf_done": self.ngf_done, "rng": self.rng.bit_generator.state}

    # ---- schedule ------------------------------------------------------------------------
    def _progress(self, step: int) -> float:
        """Share of the topology-update phase done at ``step``: from the first training step
        (after the model's ``learning_starts``) to ``stop_fraction`` of the run."""
        start = getattr(getattr(self, "model", None), "learning_starts", 0)
        stop = self.config.stop_fraction * self.total
        return float(np.clip((step - start) / max(stop - start, 1), 0.0, 1.0))

    def target_sparsity(self, step: int) -> float:
        """``ne``: the scheduled sparsity at ``step`` (linear to ``final_sparsity`` at the stop)."""
        c = self.config
        return c.initial_sparsity + (c.final_sparsity - c.initial_sparsity) * self._progress(step)

    def zeta(self, step: int) -> float:
        """Share of active connections pruned and regrown at ``step`` (cosine decay to 0)."""
        return self.config.zeta / 2 * (1 + math.cos(math.pi * self._progress(step)))

    def sparsity(self) -> float:
        return self.sparse.sparsity() if self.sparse else 0.0

    # ---- the step ------------------------------------------------------------------------
    def _on_rollout_start(self) -> None:
        if self._on_rollout_hook is not None:
            self._on_rollout_hook(self)

    def _on_step(self) -> bool:
        if self.sparse is not None:
            self.sparse.apply()  # the target networks after their Polyak update
        step, c = self.num_timesteps, self.config
        learning = step > self.model.learning_starts and self.model.replay_buffer.size() >= c.batch_size
        stop = int(c.stop_fraction * self.total)
        if learning and (step % c.delta == 0 or (c.method == "ne" and step == stop)):
            data = self.model.replay_buffer.sample(c.batch_size, env=self.model._vec_normalize_env)
            scores = activation_scores(self.model, data)
            self.last_dormancy = dormancy(scores, c.tau)
            if c.method == "ne" and step <= stop:
                self.topology_update(data, step, scores)
            if c.experience_review and isinstance(self.model.replay_buffer, WindowReplayBuffer):
                ratio = max(self.last_dormancy["actor_dormant_ratio"], self.last_dormancy["critic_dormant_ratio"])
                self.model.replay_buffer.window = c.window_max if ratio > c.review_threshold else c.window_min
        if c.method == "ngf" and not self.ngf_done and learning and step >= c.ngf_at * self.total:
            self.prune_units(self.model.replay_buffer.sample(c.batch_size, env=self.model._vec_normalize_env))
        if self._on_step_hook is not None:
            self._on_step_hook(self)
        return True

    def topology_update(self, data, step: int, scores: list | None = None) -> None:
        """One small-to-large update: release dormant neurons' inputs, prune the weakest
        active connections, grow the strongest potential gradients up to the schedule.
        ``scores``: :func:`activation_scores` on ``data`` (computed when not given)."""
        c = self.config
        grads = self._potential_gradients(data)
        if c.dormant_pruning:
            dormant_rows = self._dormant_rows(scores if scores is not None else activation_scores(self.model, data))
        else:
            dormant_rows = {}
        shapes = [tuple(m.weight.shape) for m in self.sparse.layers]
        densities = erdos_renyi_densities(shapes, self.target_sparsity(step))
        zeta = self.zeta(step)
        for i, (layer, mask) in enumerate(zip(self.sparse.layers, self.sparse.masks, strict=True)):
            mask = mask.clone()
            if i in dormant_rows:
                mask[dormant_rows[i]] = False
            target_active = round(densities[i] * mask.numel())
            before = mask.flatten().clone()
            flat = before.clone()
            n_prune = int(zeta * int(before.sum()))
            if n_prune > 0:
                magnitude = layer.weight.detach().abs().flatten().masked_fill(~flat, float("inf"))
                flat[torch.topk(magnitude, n_prune, largest=False).indices] = False
            dropped = before & ~flat
            n_grow = max(0, target_active - int(flat.sum()))
            candidates = ~flat & ~dropped
            if int(candidates.sum()) < n_grow:  # not enough never-dropped room: regrow dropped ones too
                candidates = ~flat
            n_grow = min(n_grow, int(candidates.sum()))
            grown = torch.zeros_like(flat)
            if n_grow > 0:
                potential = grads[i].flatten().masked_fill(~candidates, -1.0)
                grown[torch.topk(potential, n_grow).indices] = True
            flat |= grown
            self.sparse.set_mask(i, flat.view_as(mask), grown.view_as(mask), c.grown_init)
        self.updates += 1

    def _potential_gradients(self, data) -> list[torch.Tensor]:
        """|gradient| of every masked layer's weight, inactive weights included: the critic
        loss's for the Q heads, the actor loss's for the actor."""
        params = list(self.model.policy.parameters())
        losses = td3_losses(self.model, data)
        grads = [None] * len(self.sparse.layers)
        with self.sparse.dense_gradients():
            for loss, is_actor in zip(losses, (False, True), strict=True):
                for p in params:
                    p.grad = None
                loss.backward(retain_graph=not is_actor)
                for i, (n, _) in enumerate(self.index):
                    if (n == 0) == is_actor:
                        grads[i] = self.sparse.layers[i].weight.grad.detach().abs().clone()
        for p in params:
            p.grad = None
        return grads

    def _dormant_rows(self, scores: list) -> dict[int, torch.Tensor]:
        """Masked-layer index -> boolean rows (output units) that are dormant."""
        rows = {}
        for n, lin, mean_abs, _ in scores:
            normalised = mean_abs / (mean_abs.mean() + 1e-9)
            rows[self.index.index((n, lin))] = normalised <= self.config.tau
        return rows

    def prune_units(self, data) -> None:
        """``ngf``: every hidden layer keeps its ``ngf_keep`` most active units; the others'
        incoming and outgoing connections are masked for good."""
        for n, lin, mean_abs, _ in activation_scores(self.model, data):
            keep = torch.zeros_like(mean_abs, dtype=torch.bool)
            keep[torch.topk(mean_abs, max(1, round(self.config.ngf_keep * mean_abs.numel()))).indices] = True
            i = self.index.index((n, lin))
            self.sparse.masks[i] = self.sparse.masks[i] & keep[:, None]
            following = self.index.index((n, self._next_linear(n, lin)))
            self.sparse.masks[following] = self.sparse.masks[following] & keep[None, :]
        self.sparse.apply()
        self.ngf_done = True

    def _next_linear(self, n: int, lin: int) -> int:
        net = td3_networks(self.model)[n][0]
        return next(i for i in range(lin + 1, len(net)) if isinstance(net[i], nn.Linear))
