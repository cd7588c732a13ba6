"""Pruning in rounds, the shape of Torch-Pruning's ``MetaPruner``: build it with a schedule
of targets, then call :meth:`RoundPruner.step` once per round (fine-tune in between if you
like). Each step re-measures the units' scores on the current network and keeps, under one
global threshold on per-layer-normalised scores, as many units as the round's target allows.
The scheduled NGF heuristic and the pruning sweeps both prune this way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from prune_env.bisection import counts_within_flops
from prune_env.importance import global_threshold_counts
from prune_env.layer_types import LayerType
from prune_env.pruner import make_pruner
from prune_env.surgery import top_units

RESOURCES = ("flops", "units")
ROUND_CRITERIA = ("l1", "activation")
"""The criteria a round re-measures on the current network."""


class RoundPruner:
    """Prunes physically smaller copies of ``model`` in rounds.

    - ``schedule``: the fraction of the *original* network's ``resource`` to keep after each
      round (``flops``: FLOPs, at least ``floor`` units per layer; ``units``: all units).
    - ``criterion``: ``activation`` (NGF) or ``l1``; scores are re-measured every round on
      ``calibration_inputs``.
    - ``round_counts``: maps planned unit counts to allowed ones (the env's ``round_to``).
    - ``cost``: what the ``flops`` resource measures from unit counts (default: FLOPs; the
      env's predicted latency under a latency budget).
    - ``keep_layers``: modules whose units stay, for networks that are not sequential
      (the target's ``keep_layers``).

    ``model`` is never modified; :attr:`model` is the network after the last step (the
    caller may fine-tune it in place between steps).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, schedule: Sequence[float],
                 calibration_inputs: torch.Tensor | None = None, criterion: str = "activation",
                 resource: str = "flops", floor: np.ndarray | None = None, layer_types: Iterable[LayerType] = (),
                 round_counts: Callable[[np.ndarray], np.ndarray] | None = None,
                 cost: Callable[[np.ndarray], float] | None = None, keep_layers: Sequence[str] | None = None):
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; choose one of: {', '.join(RESOURCES)}")
        if not schedule or any(not 0.0 < float(f) <= 1.0 for f in schedule):
            raise ValueError(f"every round's target must lie in (0, 1], got {list(schedule)}")
        if criterion not in ROUND_CRITERIA:
            raise ValueError(f"rounds prune by 'activation' or 'l1', not {criterion!r}")
        self.example, self.calibration_inputs = example, calibration_inputs
        self.schedule, self.criterion, self.resource = [float(f) for f in schedule], criterion, resource
        self.layer_types = tuple(layer_types)
        self.round_counts = round_counts
        self.keep_layers = keep_layers
        original = make_pruner(model, example, calibration_inputs, self.layer_types, keep_layers)
        self.units_total = int(original.units.sum())
        self.cost = cost or original.flop_model.flops
        self.cost_base = float(self.cost(original.units))
        self.floor = np.ones_like(original.units) if floor is None else np.asarray(floor)
        self.model: nn.Module = model
        self.counts: np.ndarray = original.units.copy()
        self.origin: list[np.ndarray] = [np.arange(n) for n in original.units]
        """The original network's index of every unit of every layer of :attr:`model`."""
        self.round = 0

    def step(self) -> nn.Module:
        """Prune to the next round's target; returns the new, smaller network."""
        if self.round >= len(self.schedule):
            raise RuntimeError(f"all {len(self.schedule)} rounds are done")
        keep = self.schedule[self.round]
        pruner = self._current_pruner()
        scores = pruner.stats.activation if self.criterion == "activation" else pruner.stats.l1
        counts_at = global_threshold_counts(scores)
        if self.round_counts is not None:
            threshold_counts, counts_at = counts_at, lambda x: self.round_counts(threshold_counts(x))
        if self.resource == "flops":
            counts = counts_within_flops(self.cost, counts_at, keep * self.cost_base, self.floor, 0.0, 1.0)
        else:
            counts = np.minimum(counts_at(min(1.0, keep * self.units_total / pruner.units.sum())), pruner.units)
        return self._prune(pruner, counts)

    def step_to(self, counts: np.ndarray, required: Sequence[Sequence[int]] | None = None) -> nn.Module:
        """Prune the current network to ``counts`` units per layer (at most its own), the
        units chosen by the criterion re-measured on it: a round towards given widths.
        ``required``: units of the *original* network, per layer, that stay whatever their
        score (a channel agent's chosen units; ``counts`` must leave room for them)."""
        pruner = self._current_pruner()
        counts = np.minimum(np.asarray(counts, dtype=np.int64), pruner.units)
        if required is None:
            return self._prune(pruner, counts)
        keep = []
        for layer, (n, units) in enumerate(zip(counts, required, strict=True)):
            must = np.isin(self.origin[layer], np.asarray(units, dtype=np.int64))
            if must.sum() > n:
                raise ValueError(f"layer {layer}: {int(must.sum())} required units do not fit in {int(n)}")
            scores = pruner.keep_scores(layer, self.criterion).clone()
            scores[torch.from_numpy(must)] = float("inf")
            keep.append(top_units(scores, int(n)))
        return self._prune(pruner, counts, keep)

    def _current_pruner(self):
        return make_pruner(self.model, self.example, self.calibration_inputs, self.layer_types, self.keep_layers)

    def _prune(self, pruner, counts: np.ndarray, keep: list[torch.Tensor] | None = None) -> nn.Module:
        keep = pruner.keep_indices(counts, self.criterion) if keep is None else keep
        self.model = pruner.prune_indices(keep)
        self.origin = [origin[k.numpy()] for origin, k in zip(self.origin, keep, strict=True)]
        self.counts = counts
        self.round += 1
        return self.model
