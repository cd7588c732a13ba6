"""Per-unit statistics of the prunable layers: mean activation (NGF) and weight L1 norm.

Measured once per environment on a calibration slice of the training split; importance
criteria and observations read them, so no episode runs the network to get them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_env.structure import PrunableLayer

UnitRows = Callable[[nn.Module], torch.Tensor]
_UNIT_ROWS: dict[type, UnitRows] = {}


def register_unit_rows(*types: type) -> Callable[[UnitRows], UnitRows]:
    """Register ``fn(module) -> (units, n)`` tensor of the weights that produce each unit."""

    def decorate(fn: UnitRows) -> UnitRows:
        for t in types:
            _UNIT_ROWS[t] = fn
        return fn

    return decorate


@register_unit_rows(nn.Conv2d, nn.Linear)
def _dense_rows(m: nn.Module) -> torch.Tensor:
    return m.weight.detach().flatten(1)


@register_unit_rows(nn.LSTM)
def _lstm_rows(m: nn.LSTM) -> torch.Tensor:
    """Hidden unit j owns row j of each gate block (i, f, g, o) of both weight matrices."""
    h = m.hidden_size
    w = torch.cat([m.weight_ih_l0.detach(), m.weight_hh_l0.detach()], dim=1)  # (4H, E+H)
    return w.reshape(4, h, -1).permute(1, 0, 2).reshape(h, -1)


def unit_weight_rows(module: nn.Module) -> torch.Tensor:
    for cls in type(module).__mro__:
        if cls in _UNIT_ROWS:
            return _UNIT_ROWS[cls](module)
    raise TypeError(f"no unit weights registered for {type(module).__name__}")


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
        self._handles = [model[layer.activation_position].register_forward_hook(self._hook(i))
                         for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            a = out.detach().abs().double()
            unit_dim = 1 if a.dim() == 4 else a.dim() - 1  # NCHW, or units last
            self.sums[i] += a.sum(dim=[d for d in range(a.dim()) if d != unit_dim])
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


def unit_l1_norms(model: nn.Sequential, layers: Sequence[PrunableLayer]) -> list[torch.Tensor]:
    """L1 norm of the weights that produce each unit of each prunable layer."""
    return [unit_weight_rows(model[layer.position]).abs().sum(1) for layer in layers]


@torch.no_grad()
def collect_stats(model: nn.Sequential, layers: Sequence[PrunableLayer], inputs: torch.Tensor,
                  batch_size: int = 256) -> LayerStats:
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
    return LayerStats(activation=tracker.means(), l1=unit_l1_norms(model, layers))
