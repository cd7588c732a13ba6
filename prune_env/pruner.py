"""One pretrained model made ready to prune: its layers, unit statistics and FLOP model."""

from __future__ import annotations

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
from prune_env.surgery import keep_count, prune_model, top_units


class Pruner:
    """Prunes copies of ``model``; the model itself is never modified.

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

    @property
    def units(self) -> np.ndarray:
        return self.flop_model.units

    @cached_property
    def stats(self) -> LayerStats:
        inputs = self.calibration_inputs if self.calibration_inputs is not None else self.example
        return collect_stats(self.model, self.layers, inputs, layer_types=self.layer_types)

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
                     rng: np.random.Generator | None = None) -> nn.Sequential:
        return self.prune_indices(self.keep_indices(counts, criterion, rng))

    def prune_indices(self, keep: Sequence[Sequence[int] | torch.Tensor]) -> nn.Sequential:
        """A physically smaller copy keeping units ``keep[i]`` of each layer."""
        return prune_model(self.model, self.layers, [torch.as_tensor(k, dtype=torch.long) for k in keep],
                           self.layer_types).eval()

    def prune(self, ratios: Sequence[float] | float, criterion: str | Importance = "l1",
              rng: np.random.Generator | None = None) -> nn.Sequential:
        """A physically smaller copy keeping the most important units at ``ratios``."""
        return self.prune_counts(self.keep_counts(ratios), criterion, rng)
