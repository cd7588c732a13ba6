"""One pretrained model made ready to prune: its layers, unit statistics and FLOP model.

:func:`make_pruner` picks the pruner: the project's own for ``nn.Sequential`` networks,
Torch-Pruning's dependency graph (:mod:`prune_env.graph`) for any other."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property

import numpy as np
import torch
from torch import nn

from prune_env.cost import FlopModel
from prune_env.importance import Importance, get_criterion
from prune_env.layer_types import LayerType, LayerTypes
from prune_env.stats import LayerStats, collect_stats
from prune_env.structure import PrunableLayer, find_prunable_layers
from prune_env.surgery import keep_count, prune_model, top_units, widths_of


class BasePruner(ABC):
    """What every pruner offers: its prunable ``layers`` (each with ``units``, ``in_units``,
    ``kind``, ``kernel``, ``stride``), a ``flop_model``, unit ``stats`` and surgery by
    kept indices; the rest (counts, scores, pruning at ratios) is shared here."""

    model: nn.Module
    example: torch.Tensor
    calibration_inputs: torch.Tensor | None
    layers: list
    flop_model: object

    extra_layer_types: tuple[LayerType, ...] = ()
    """Module types registered beyond the built-ins (to build another pruner like this one)."""

    @property
    def units(self) -> np.ndarray:
        return self.flop_model.units

    @property
    @abstractmethod
    def stats(self) -> LayerStats:
        """Per-unit mean activation and weight L1 norm of every layer (measured once)."""

    @abstractmethod
    def prune_indices(self, keep: Sequence[Sequence[int] | torch.Tensor]) -> nn.Module:
        """A physically smaller copy keeping units ``keep[i]`` of each layer."""

    @abstractmethod
    def widths_of(self, model: nn.Module) -> list[int]:
        """Units of every prunable layer in a (possibly pruned) copy of the model."""

    def keep_counts(self, ratios: Sequence[float] | float) -> np.ndarray:
        """Units kept per layer at keep-ratios (one per layer, or one for all)."""
        if np.ndim(ratios) == 0:
            ratios = [float(ratios)] * len(self.layers)
        if len(ratios) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} keep-ratios, got {len(ratios)}")
        return np.array([keep_count(r, layer.units) for r, layer in zip(ratios, self.layers, strict=True)])

    def keep_scores(self, layer: int, criterion: str | Importance = "l1",
                    rng: np.random.Generator | None = None) -> torch.Tensor:
        """Layer ``layer``'s unit scores under ``criterion`` (higher: keep), as float64."""
        crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
        return crit.scores(self.stats, layer, rng or np.random.default_rng(0)).double()

    def keep_indices(self, counts: Sequence[int], criterion: str | Importance = "l1",
                     rng: np.random.Generator | None = None) -> list[torch.Tensor]:
        """The ``counts[i]`` most important units of each layer under ``criterion``."""
        crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
        rng = rng or np.random.default_rng(0)
        return [top_units(self.keep_scores(i, crit, rng), int(n)) for i, n in enumerate(counts)]

    def prune_counts(self, counts: Sequence[int], criterion: str | Importance = "l1",
                     rng: np.random.Generator | None = None) -> nn.Module:
        return self.prune_indices(self.keep_indices(counts, criterion, rng))

    def prune(self, ratios: Sequence[float] | float, criterion: str | Importance = "l1",
              rng: np.random.Generator | None = None) -> nn.Module:
        """A physically smaller copy keeping the most important units at ``ratios``."""
        return self.prune_counts(self.keep_counts(ratios), criterion, rng)

    def shape_of(self, widths: Sequence[int]) -> nn.Module:
        """A copy with ``widths`` units per layer (the first units of each): the architecture
        a saved pruned state dict of those widths loads into."""
        return self.prune_indices([torch.arange(int(w)) for w in widths])


class Pruner(BasePruner):
    """Prunes copies of an ``nn.Sequential`` ``model`` with the project's own surgery
    (:mod:`prune_env.surgery`, LSTMs included); the model itself is never modified.

    Statistics are measured lazily, once, on ``calibration_inputs`` (needed only by the
    activation criterion and by observations). ``layer_types`` adds module types beyond
    the built-ins to this pruner's own registry (:mod:`prune_env.layer_types`).
    """

    def __init__(self, model: nn.Sequential, example: torch.Tensor, calibration_inputs: torch.Tensor | None = None,
                 layer_types: Iterable[LayerType] = ()):
        self.model = model.eval()
        self.example = example[:1]
        self.calibration_inputs = calibration_inputs
        self.layer_types = LayerTypes(layer_types)
        self.layers: list[PrunableLayer] = find_prunable_layers(model, self.example, self.layer_types)
        self.flop_model = FlopModel(model, self.layers, self.example, self.layer_types)
        self.extra_layer_types = self.layer_types.extra

    @cached_property
    def stats(self) -> LayerStats:
        inputs = self.calibration_inputs if self.calibration_inputs is not None else self.example
        return collect_stats(self.model, self.layers, inputs, layer_types=self.layer_types)

    def prune_indices(self, keep: Sequence[Sequence[int] | torch.Tensor]) -> nn.Sequential:
        return prune_model(self.model, self.layers, [torch.as_tensor(k, dtype=torch.long) for k in keep],
                           self.layer_types).eval()

    def widths_of(self, model: nn.Module) -> list[int]:
        return widths_of(model, self.layers, self.layer_types)


def make_pruner(model: nn.Module, example: torch.Tensor, calibration_inputs: torch.Tensor | None = None,
                layer_types: Iterable[LayerType] = (), keep_layers: Sequence[str] | None = None) -> BasePruner:
    """The pruner for ``model``: the project's own :class:`Pruner` for an ``nn.Sequential``,
    Torch-Pruning's dependency graph (:class:`~prune_env.graph.GraphPruner`) for any other
    network (residual, concatenating, depthwise)."""
    if isinstance(model, nn.Sequential):
        if keep_layers is not None:
            raise ValueError("keep_layers applies to non-sequential networks; a sequential network's output "
                             "layer always stays")
        return Pruner(model, example, calibration_inputs, layer_types)
    if tuple(layer_types):
        raise ValueError("layer_types extend the sequential pruner; for other networks register a pruner "
                         "with Torch-Pruning (DependencyGraph.register_customized_layer)")
    from prune_env.graph import GraphPruner

    return GraphPruner(model, example, calibration_inputs, keep_layers)
