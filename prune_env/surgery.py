"""Physical pruning: build a smaller copy of a network that keeps chosen units.

:func:`prune_model` walks the prunable layers and slices every module that holds their
units (the layer's outputs, its batch norm, the consumer's inputs, through a flatten),
each with its :class:`~prune_env.layer_types.LayerType`'s ``slice``. The original model
is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from prune_env.layer_types import LayerTypes
from prune_env.structure import PrunableLayer


def keep_count(ratio: float, units: int) -> int:
    """Units kept at a keep-ratio in (0, 1]; at least one unit always stays."""
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"keep-ratio must be in (0, 1], got {ratio}")
    return max(1, min(units, int(round(float(ratio) * units))))


def top_units(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores, in ascending index order (ties: lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return torch.sort(order[:n_keep]).values


def prune_model(model: nn.Sequential, layers: Sequence[PrunableLayer], keep: Sequence[torch.Tensor],
                layer_types: LayerTypes | None = None) -> nn.Sequential:
    """A new, smaller model keeping unit indices ``keep[i]`` of ``layers[i]``."""
    types = layer_types or LayerTypes()
    if len(keep) != len(layers):
        raise ValueError(f"expected {len(layers)} index sets, got {len(keep)}")
    out_idx: dict[int, torch.Tensor] = {}
    in_idx: dict[int, torch.Tensor] = {}
    for layer, idx in zip(layers, keep, strict=True):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= layer.units:
            raise ValueError(f"unit indices of layer {layer.position} must be non-empty and within 0..{layer.units - 1}")
        out_idx[layer.position] = idx
        for pos in layer.channel_wise:
            out_idx[pos] = idx
        f = layer.features_per_unit
        in_idx[layer.consumer] = (idx[:, None] * f + torch.arange(f)).reshape(-1) if f > 1 else idx
    new_modules = []
    for pos, module in enumerate(model):
        if pos in out_idx or pos in in_idx:
            new = types.of(module).slice(module, in_idx.get(pos), out_idx.get(pos))
            new.train(module.training)
        else:
            new = copy.deepcopy(module)
        new_modules.append(new)
    return nn.Sequential(*new_modules)


def widths_of(model: nn.Sequential, layers: Sequence[PrunableLayer], layer_types: LayerTypes | None = None) -> list[int]:
    """Units of every prunable layer in a (possibly pruned) model."""
    types = layer_types or LayerTypes()
    return [types.of(model[layer.position]).units(model[layer.position], out=True) for layer in layers]
