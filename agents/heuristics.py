"""Classic pruning heuristics as policies of the environment.

Each plans all keep-ratios up front from the environment's statistics so that the
budget (FLOPs, or predicted latency) is met, then answers ``predict`` for whichever layer the observation describes.
``preferred_criterion`` names the unit criterion the heuristic is defined with; scripts
build the environment with it (L1 keeps high-magnitude units, NGF high-activation ones).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from agents.allocation import counts_meeting_budget, global_threshold_allocation, sample_allocation
from agents.base import PrunesInRounds, run_episode
from prune_env.env import PruningEnv
from prune_env.rounds import ROUND_CRITERIA, RoundPruner
from prune_env.schedules import polynomial_decay


class HeuristicPolicy:
    """A fixed plan of keep-ratios, one per layer, that meets the environment's budget."""

    name = "heuristic"
    preferred_criterion: str | None = None

    def __init__(self, env: PruningEnv, seed: int = 0):
        if env.budget is None:
            raise ValueError(f"the {self.name} heuristic needs an environment with a flops_budget or latency_budget")
        self.env, self.seed = env, seed
        self.keep_ratios = self.plan()

    def plan(self) -> np.ndarray:
        raise NotImplementedError

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        layer = self.env.unwrapped.current_layer
        return np.array([self.keep_ratios[layer]], dtype=np.float32), state

    def _meet_budget(self, counts_at: Callable[[float], np.ndarray], lo: float, hi: float) -> np.ndarray:
        env = self.env
        return self._as_ratios(counts_meeting_budget(env, counts_at, env.budget_cost, lo, hi))

    def _as_ratios(self, counts: np.ndarray) -> np.ndarray:
        return np.clip(counts / self.env.units, self.env.min_keep, 1.0)


class UniformPolicy(HeuristicPolicy):
    """The same keep-ratio in every layer."""

    name = "uniform"

    def plan(self):
        return self._meet_budget(lambda r: self.env.pruner.keep_counts(max(r, 1e-9)), self.env.min_keep, 1.0)


class L1Policy(HeuristicPolicy):
    """Magnitude: one global threshold on L1 unit importance normalised per layer."""

    name = "l1"
    preferred_criterion = "l1"

    def plan(self):
        return self._as_ratios(global_threshold_allocation(self.env, self.env.pruner.stats.l1))


class NGFPolicy(HeuristicPolicy):
    """NGF single-shot: one global threshold on mean activation normalised per layer."""

    name = "ngf"
    preferred_criterion = "activation"

    def plan(self):
        return self._as_ratios(global_threshold_allocation(self.env, self.env.pruner.stats.activation))


class FixedAllocation:
    """Plays given keep-ratios, one per layer, or given unit indices (``kept_units``, in a
    ``mask``-mode environment): a saved run's best network, rebuilt."""

    name = "fixed"

    def __init__(self, env: PruningEnv, keep_ratios, name: str = "fixed", kept_units=None):
        if len(keep_ratios) != env.n_layers:
            raise ValueError(f"{len(keep_ratios)} keep-ratios for {env.n_layers} prunable layers")
        if (kept_units is not None) != (env.unwrapped.action_mode == "mask"):
            raise ValueError("unit indices are played in action_mode='mask', keep-ratios in 'ratio'")
        self.env, self.keep_ratios, self.name = env, np.asarray(keep_ratios, dtype=np.float64), name
        self.kept_units = kept_units

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        layer = self.env.unwrapped.current_layer
        if self.kept_units is None:
            return np.array([self.keep_ratios[layer]], dtype=np.float32), state
        scores = np.zeros(self.env.unwrapped.action_space.shape, dtype=np.float32)
        scores[np.asarray(self.kept_units[layer], dtype=np.int64)] = 1.0
        return scores, state


class FixedWidths(PrunesInRounds):
    """Given unit counts per layer, pruned in one go with the environment's criterion and
    measured as an episode would be, whatever the budget says: one architecture, measured
    (``evaluate.py --widths``). ``kept_units``: the very units of every layer (a channel
    agent's choice), instead of the criterion's."""

    name = "widths"
    rounds = 1

    def __init__(self, env: PruningEnv, counts, kept_units=None):
        counts = np.asarray(counts, dtype=np.int64)
        units = env.units
        if counts.shape != units.shape or (counts < 1).any() or (counts > units).any():
            layers = ", ".join(f"{layer.kind} {layer.units}" for layer in env.layers)
            raise ValueError(f"widths {counts.tolist()} do not fit {env.target.name}: give {len(units)} counts, "
                             f"each from 1 to the layer's units ({layers})")
        if kept_units is not None and [len(k) for k in kept_units] != counts.tolist():
            raise ValueError(f"kept_units hold {[len(k) for k in kept_units]} units, not the widths {counts.tolist()}")
        self.env, self.counts, self.kept_units = env, counts, kept_units

    def run(self) -> tuple[torch.nn.Module, dict]:
        pruner = self.env.pruner
        model = (pruner.prune_counts(self.counts, self.env.criterion) if self.kept_units is None
                 else pruner.prune_indices(self.kept_units))
        return model, self.finish(model, self.counts, self.kept_units)


class RandomPolicy(HeuristicPolicy):
    """Random keep-ratios, each uniform in [min_keep, 1], scaled together to meet the budget."""

    name = "random"

    def plan(self):
        return sample_allocation(self.env, np.random.default_rng(self.seed))


class ScheduledNGF(PrunesInRounds):
    """NGF reached over several rounds: prune to a FLOPs (or predicted-latency) target that decays polynomially
    towards the budget, ``target_k = B + (1 - B) * (1 - k / rounds) ** power``, re-measuring
    activations and fine-tuning briefly between rounds. Works on the environment's model,
    target and measurement, but not as a single episode (the network changes between rounds).

    ``finetune_budget`` is the fine-tuning, in epochs, that the whole procedure may spend,
    the final fine-tune included: every round gets an even share, so the fine-tunes between
    rounds are paid out of the same budget a single-shot policy's one fine-tune gets
    (``finetune_epochs_spent`` in the record; :func:`experiments.report.final_report` fine-tunes
    only what is left). Comparisons at unequal fine-tuning measure the fine-tuning.
    """

    name = "ngf_scheduled"
    preferred_criterion = "activation"

    def __init__(self, env: PruningEnv, seed: int = 0, rounds: int = 3, power: float = 3.0,
                 finetune_budget: float = 1.0):
        if env.budget is None:
            raise ValueError("ngf_scheduled needs an environment with a flops_budget or latency_budget")
        if rounds < 1:
            raise ValueError(f"ngf_scheduled needs at least one round, got {rounds}")
        if finetune_budget < 0:
            raise ValueError(f"ngf_scheduled needs a fine-tuning budget of at least 0 epochs, got {finetune_budget}")
        self.env, self.seed, self.rounds, self.power = env, seed, rounds, power
        self.finetune_epochs = finetune_budget / rounds

    def flops_targets(self) -> list[float]:
        return [polynomial_decay(1.0, self.env.budget, k / self.rounds, self.power)
                for k in range(1, self.rounds + 1)]

    def run(self) -> tuple[torch.nn.Module, dict]:
        """Prune in rounds; returns the final model and its record (as an episode's)."""
        env = self.env
        rounds = RoundPruner(env.model, env.target.example_input(), self.flops_targets(), env.pruner.calibration_inputs,
                             "activation", resource="flops", floor=env.min_counts, layer_types=env.pruner.extra_layer_types,
                             round_counts=env.round_counts, cost=env.cost, keep_layers=env.target.keep_layers)
        for k in range(1, self.rounds + 1):
            model = self.between_rounds(rounds.step(), k)
        return model, self.finish(model, rounds.counts)


class InRounds(PrunesInRounds):
    """Any single-shot policy's network reached in rounds, as ``ngf_scheduled`` reaches its own:
    one episode of ``policy`` gives the final widths; round ``k`` of ``rounds`` keeps
    ``final + (units - final) * (1 - k / rounds) ** power`` units per layer, the units chosen
    by the environment's criterion re-measured on the current network, and the network is
    fine-tuned between rounds out of the one fine-tuning budget (an even share per round,
    ``finetune_epochs_spent`` in the record). Separates what an allocation is worth from what
    a schedule is worth: ``ngf_scheduled`` against ``ppo`` in rounds is like for like.
    A channel policy (``action_mode='mask'``) chose its units: they all stay in every round,
    and the criterion only orders the others' going, so the last round ends at its very units."""

    def __init__(self, env: PruningEnv, policy, seed: int = 0, rounds: int = 3, power: float = 3.0,
                 finetune_budget: float = 1.0):
        if getattr(policy, "rounds", 1) > 1:
            raise ValueError(f"{policy.name} prunes in rounds of its own")
        if env.criterion not in ROUND_CRITERIA:
            raise ValueError(f"rounds re-measure the 'l1' or 'activation' criterion, not {env.criterion!r}")
        if rounds < 1 or finetune_budget < 0:
            raise ValueError(f"rounds needs at least one round and a fine-tuning budget of at least 0, "
                             f"got {rounds} and {finetune_budget}")
        self.env, self.policy, self.seed, self.rounds, self.power = env, policy, seed, rounds, power
        self.name = f"{getattr(policy, 'name', 'policy')}+rounds"
        self.finetune_epochs = finetune_budget / rounds

    def widths(self, final: np.ndarray) -> list[np.ndarray]:
        """Unit counts per layer after each round, ending at ``final``."""
        units = self.env.units
        return [np.ceil(polynomial_decay(1.0, 0.0, k / self.rounds, self.power) * (units - final)).astype(np.int64)
                + final for k in range(1, self.rounds + 1)]

    def run(self) -> tuple[torch.nn.Module, dict]:
        env = self.env
        if isinstance(self.policy, FixedWidths):  # given widths: nothing to prune or measure first
            chosen = {"keep_counts": self.policy.counts, "kept_units": self.policy.kept_units}
        elif isinstance(self.policy, PrunesInRounds):  # its one round gives the widths
            chosen = self.policy.run()[1]
        else:
            chosen = run_episode(env, self.policy, seed=self.seed)
        final, kept = np.asarray(chosen["keep_counts"], dtype=np.int64), chosen.get("kept_units")
        plan = self.widths(final)
        rounds = RoundPruner(env.model, env.target.example_input(), [c.sum() / env.units.sum() for c in plan],
                             env.pruner.calibration_inputs, env.criterion, resource="units",
                             layer_types=env.pruner.extra_layer_types, keep_layers=env.target.keep_layers)
        for k, counts in enumerate(plan, start=1):
            model = self.between_rounds(rounds.step_to(counts, required=kept), k)
        return model, self.finish(model, final, kept)


def in_rounds(env: PruningEnv, policy, rounds: int, seed: int = 0, finetune_budget: float = 1.0):
    """``policy`` with its network reached in ``rounds`` rounds (:class:`InRounds`); ``policy``
    itself when ``rounds`` is 1 or it prunes in rounds of its own (``ngf_scheduled``)."""
    if rounds <= 1 or getattr(policy, "rounds", 1) > 1:
        return policy
    return InRounds(env, policy, seed=seed, rounds=rounds, finetune_budget=finetune_budget)


HEURISTICS = {cls.name: cls for cls in (UniformPolicy, L1Policy, NGFPolicy, RandomPolicy, ScheduledNGF)}


def make_heuristic(name: str, env: PruningEnv, seed: int = 0, finetune_budget: float | None = None):
    """The heuristic ``name`` on ``env``; ``finetune_budget`` (epochs, the final fine-tune
    included) reaches the heuristics that fine-tune between rounds."""
    if name not in HEURISTICS:
        raise ValueError(f"unknown heuristic {name!r}; choose one of: {', '.join(HEURISTICS)}")
    cls = HEURISTICS[name]
    if issubclass(cls, PrunesInRounds) and finetune_budget is not None:
        return cls(env, seed=seed, finetune_budget=finetune_budget)
    return cls(env, seed=seed)
