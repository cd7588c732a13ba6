"""Pruning while a network trains, with the statistics, criteria and surgery of the
environment: NGF over a critical period, NGF on a polynomial schedule, magnitude.

A training loop calls ``begin_period(t)`` before period ``t`` (an epoch or an episode,
counted from 0) and ``end_period(t)`` after it. Structured methods mask units (masked units
output zero, so training goes on around them) and remove them physically in
:meth:`TrainingPruner.export`; magnitude pruning zeroes weights for good.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prune_env.cost import count_nonzero_params, count_params
from prune_env.importance import global_threshold_counts
from prune_env.schedules import polynomial_decay
from prune_env.stats import ActivationTracker
from prune_env.structure import PrunableLayer, find_prunable_layers
from prune_env.surgery import prune_model, top_units


class UnitMasks:
    """Keep-masks of the units of each prunable layer, applied to the layer's activations."""

    def __init__(self, model: nn.Sequential, layers: list[PrunableLayer]):
        self.model, self.layers = model, layers
        self.keep = [torch.ones(layer.units, dtype=torch.bool) for layer in layers]
        self._handles: list = []
        self.attach()

    def attach(self) -> None:
        for i, layer in enumerate(self.layers):
            self._handles.append(self.model[layer.activation_position].register_forward_hook(self._hook(i, layer)))

    def _hook(self, i: int, layer: PrunableLayer):
        def hook(_module, _inputs, output):
            mask = self.keep[i].to(output.device, output.dtype)
            shape = [1] * output.dim()
            shape[layer.unit_axis] = -1
            return output * mask.view(shape)
        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def kept_indices(self) -> list[torch.Tensor]:
        return [torch.nonzero(k).flatten() for k in self.keep]

    def physical(self) -> nn.Sequential:
        """A physically smaller copy without the masked units (same outputs as masked)."""
        self.detach()
        try:
            return prune_model(self.model, self.layers, self.kept_indices()).eval()
        finally:
            self.attach()


class TrainingPruner:
    """Prunes a model while it trains; this base class prunes nothing."""

    name = "none"

    def __init__(self) -> None:
        self.model: nn.Sequential | None = None
        self.example: torch.Tensor | None = None
        self.layers: list[PrunableLayer] = []
        self.pruned_at: list[int] = []
        self.params_before = 0

    def attach(self, model: nn.Sequential, example: torch.Tensor) -> None:
        self.model, self.example = model, example
        self.layers = find_prunable_layers(model, example)
        self.params_before = count_params(model)

    def begin_period(self, t: int) -> None:
        """Called before training period ``t`` (0-based epoch or episode)."""

    def end_period(self, t: int) -> None:
        """Called after training period ``t``."""

    def last_pruning_period(self) -> int:
        """The last period after which this pruner prunes (-1: never); no early stop before it."""
        return -1

    def export(self) -> nn.Module:
        """The model to save: physically smaller where units were removed."""
        return copy.deepcopy(self.model).eval()

    def params_of(self, model: nn.Module) -> int:
        """Parameters of an exported model, as this method counts them."""
        return count_params(model)

    def params_after(self) -> int:
        return self.params_of(self.export())

    def summary(self, exported: nn.Module) -> dict:
        """Parameters before and after, pruning rate and pruning periods, for results.json."""
        after = self.params_of(exported)
        return {"params_before": self.params_before, "params_after": after,
                "pruning_rate": 1.0 - after / self.params_before, "pruned_at": self.pruned_at}


class _StructuredPruner(TrainingPruner):
    """Shared by the NGF methods: unit masks, an activation tracker, one global threshold."""

    def attach(self, model, example):
        super().attach(model, example)
        self.masks = UnitMasks(model, self.layers)
        self.tracker: ActivationTracker | None = None

    def _track(self) -> None:
        if self.tracker is None:
            self.tracker = ActivationTracker(self.model, self.layers)

    def _prune_to(self, keep_fraction: float, t: int) -> None:
        """Keep ``keep_fraction`` of all units: the most active ones over the tracked period
        (activations normalised per layer, one global threshold); masked units stay masked."""
        means = self.tracker.means()
        counts = global_threshold_counts(means)(keep_fraction)
        for i, (m, n) in enumerate(zip(means, counts, strict=True)):
            n = min(int(n), int(self.masks.keep[i].sum()))
            scores = torch.where(self.masks.keep[i], m, torch.full_like(m, -1.0))
            keep = torch.zeros_like(self.masks.keep[i])
            keep[top_units(scores, n)] = True
            self.masks.keep[i] = keep
        self.pruned_at.append(t)

    def unit_keep_fraction(self) -> float:
        return float(sum(int(k.sum()) for k in self.masks.keep) / sum(len(k) for k in self.masks.keep))

    def export(self):
        return self.masks.physical()


class NGFPruner(_StructuredPruner):
    """NGF: track mean |activation| per unit over a critical period, then keep the most
    active ``keep_fraction`` of the units (masked while training goes on)."""

    name = "ngf"

    def __init__(self, critical_start: int = 0, critical_duration: int = 1, keep_fraction: float = 0.7):
        super().__init__()
        if not 0 < keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.critical_start, self.critical_duration, self.keep_fraction = critical_start, critical_duration, keep_fraction

    def last_pruning_period(self):
        return self.critical_start + self.critical_duration - 1

    def begin_period(self, t):
        if t == self.critical_start:
            self._track()

    def end_period(self, t):
        if self.tracker is not None and t + 1 == self.critical_start + self.critical_duration:
            self._prune_to(self.keep_fraction, t)
            self.tracker.remove()
            self.tracker = None


class ScheduledNGFPruner(_StructuredPruner):
    """NGF repeated every ``frequency`` periods from ``pruning_start`` to ``pruning_end``,
    the keep fraction decaying polynomially from ``initial_keep`` to ``final_keep``."""

    name = "ngf_scheduled"

    def __init__(self, pruning_start: int = 0, pruning_end: int = 10, frequency: int = 1,
                 initial_keep: float = 1.0, final_keep: float = 0.5, power: float = 3.0):
        super().__init__()
        if pruning_end <= pruning_start or frequency < 1:
            raise ValueError("need pruning_start < pruning_end and frequency >= 1")
        self.start, self.end, self.frequency = pruning_start, pruning_end, frequency
        self.initial_keep, self.final_keep, self.power = initial_keep, final_keep, power

    def keep_at(self, t: int) -> float:
        """The scheduled keep fraction after period ``t``."""
        return polynomial_decay(self.initial_keep, self.final_keep, (t - self.start) / (self.end - self.start),
                                self.power)

    def last_pruning_period(self):
        return self.end

    def begin_period(self, t):
        if t >= self.start:
            self._track()

    def end_period(self, t):
        due = self.start <= t <= self.end and (t - self.start) % self.frequency == 0
        if self.tracker is not None and (due or t == self.end):
            self._prune_to(self.keep_at(t), t)
            self.tracker.reset()
        if t >= self.end and self.tracker is not None:
            self.tracker.remove()
            self.tracker = None


class MagnitudePruner(TrainingPruner):
    """Global unstructured L1 pruning of ``prune_fraction`` of all conv and dense weights
    after period ``apply_at``: the smallest weights, compared across all layers, are zeroed
    before every forward pass while training goes on, and for good on export."""

    name = "magnitude"

    def __init__(self, prune_fraction: float = 0.5, apply_at: int = 0):
        super().__init__()
        if not 0 <= prune_fraction < 1:
            raise ValueError(f"prune_fraction must be in [0, 1), got {prune_fraction}")
        self.prune_fraction, self.apply_at = prune_fraction, apply_at
        self.masks: dict[nn.Module, torch.Tensor] = {}
        self._handles: list = []

    def last_pruning_period(self):
        return self.apply_at

    def end_period(self, t):
        if t != self.apply_at:
            return
        modules = weight_modules(self.model)
        self.masks = dict(zip(modules, global_magnitude_masks(modules, self.prune_fraction), strict=True))
        self._apply_masks(self.model)
        self._hook_masks()
        self.pruned_at.append(t)

    def _hook_masks(self) -> None:
        self._handles = [m.register_forward_pre_hook(lambda mod, _inp: self._zero(mod)) for m in self.masks]

    def _zero(self, module: nn.Module) -> None:
        # on .data: weights only change between forward passes through the optimiser, so this
        # never alters a value an autograd graph in flight has used
        module.weight.data.mul_(self.masks[module].to(module.weight.device))

    def _apply_masks(self, model: nn.Module) -> None:
        with torch.no_grad():
            for original, copy_ in zip(weight_modules(self.model), weight_modules(model), strict=True):
                if original in self.masks:
                    copy_.weight.mul_(self.masks[original].to(copy_.weight.device))

    def export(self):
        for h in self._handles:
            h.remove()
        model = copy.deepcopy(self.model).eval()  # without hooks: they refer to this model's modules
        self._apply_masks(model)
        self._hook_masks()
        return model

    def params_of(self, model):
        return count_nonzero_params(model)

    def weight_sparsity(self) -> float:
        """Share of conv and dense weights that are zero now."""
        weights = [m.weight.detach() for m in weight_modules(self.model)]
        return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def weight_modules(model: nn.Module) -> list[nn.Module]:
    """The conv and dense layers of ``model``: what magnitude pruning acts on."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def global_magnitude_masks(modules: list[nn.Module], fraction: float) -> list[torch.Tensor]:
    """Keep-masks of the weights of ``modules`` that zero the ``fraction`` of smallest
    absolute values, compared across all of them (global unstructured L1)."""
    flat = torch.cat([m.weight.detach().abs().flatten() for m in modules])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, int(round(fraction * len(flat))), largest=False).indices] = False
    return [mask.view_as(m.weight) for m, mask in zip(modules, keep.split([m.weight.numel() for m in modules]),
                                                       strict=True)]


PRUNERS = {"none": TrainingPruner, "ngf": NGFPruner, "ngf_scheduled": ScheduledNGFPruner,
           "magnitude": MagnitudePruner}
