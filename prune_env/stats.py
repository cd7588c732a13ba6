"""Per-unit statistics of the prunable layers: mean activation (NGF) and weight L1 norm.

Measured once per environment on a calibration slice of the training split; importance
criteria and observations read them, so no episode runs the network to get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_env.layer_types import LayerTypes
from prune_env.structure import PrunableLayer


@dataclass
class LayerStats:
    """``activation[i]`` and ``l1[i]``: one value per unit of prunable layer ``i``."""

    activation: list[torch.Tensor]
    l1: list[torch.Tensor]


class ActivationTracker:
    """Running mean absolute activation per unit of each prunable layer, from forward hooks
    on the layers' activation modules; collects while attached, during training too."""

    def __init__(self, model: nn.Sequential, layers: Sequence[PrunableLayer]):
        self.sums = [torch.zeros(layer.units, dtype=torch.float64) for layer in layers]
        self.counts = [0] * len(layers)
        self._handles = [model[layer.activation_position].register_forward_hook(self._hook(i, layer.unit_axis))
                         for i, layer in enumerate(layers)]

    def _hook(self, i: int, unit_axis: int):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            a = out.detach().abs().double()
            unit_dim = unit_axis % a.dim()
            self.sums[i] += a.sum(dim=[d for d in range(a.dim()) if d != unit_dim]).cpu()
            self.counts[i] += a.numel() // a.shape[unit_dim]
        return hook

    def means(self) -> list[torch.Tensor]:
        return [(s / max(c, 1)).float() for s, c in zip(self.sums, self.counts, strict=True)]

    def reset(self) -> None:
        for s in self.sums:
            s.zero_()
        self.counts = [0] * len(self.counts)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def unit_l1_norms(model: nn.Sequential, layers: Sequence[PrunableLayer],
                  layer_types: LayerTypes | None = None) -> list[torch.Tensor]:
    """L1 norm of the weights that produce each unit of each prunable layer."""
    types = layer_types or LayerTypes()
    return [types.of(model[layer.position]).unit_rows(model[layer.position]).abs().sum(1) for layer in layers]


@torch.no_grad()
def collect_stats(model: nn.Sequential, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                  batch_size: int = 256, layer_types: LayerTypes | None = None) -> LayerStats:
    """Mean absolute activation per unit over ``inputs`` and L1 norm of each unit's weights."""
    tracker = ActivationTracker(model, layers)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size])
    finally:
        tracker.remove()
        model.train(was_training)
    return LayerStats(activation=tracker.means(), l1=unit_l1_norms(model, layers, layer_types))
