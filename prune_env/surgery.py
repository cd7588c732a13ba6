"""Physical pruning: build a smaller copy of a network that keeps chosen units.

Each weighted or channel-wise module type has a *slicer*, registered with
:func:`register_slicer`, that makes a new module keeping given input and output units.
:func:`prune_model` walks the prunable layers and slices every module that holds their
units (the layer's outputs, its batch norm, the consumer's inputs, through a flatten).
The original model is never modified. A new layer type is supported by registering a
slicer for it, not by special-casing it here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import skip_init

from prune_env.structure import PrunableLayer, unit_count

Slicer = Callable[[nn.Module, torch.Tensor | None, torch.Tensor | None], nn.Module]
_SLICERS: dict[type, Slicer] = {}


def register_slicer(*types: type) -> Callable[[Slicer], Slicer]:
    """Register ``fn(module, in_idx, out_idx) -> new module`` for ``types`` (and subclasses)."""

    def decorate(fn: Slicer) -> Slicer:
        for t in types:
            _SLICERS[t] = fn
        return fn

    return decorate


def slicer_for(module: nn.Module) -> Slicer:
    for cls in type(module).__mro__:
        if cls in _SLICERS:
            return _SLICERS[cls]
    raise TypeError(f"no slicer registered for {type(module).__name__}; add one with register_slicer")


def _take(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx)


@register_slicer(nn.Conv2d)
def slice_conv(m: nn.Conv2d, in_idx, out_idx) -> nn.Conv2d:
    if m.groups != 1:
        raise NotImplementedError("grouped convolutions are not supported")
    w = _take(_take(m.weight.detach(), out_idx, 0), in_idx, 1)
    new = skip_init(type(m), w.shape[1], w.shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
                    dilation=m.dilation, bias=m.bias is not None, padding_mode=m.padding_mode)
    new.weight.data = w.clone()
    if m.bias is not None:
        new.bias.data = _take(m.bias.detach(), out_idx, 0).clone()
    return new


@register_slicer(nn.Linear)
def slice_linear(m: nn.Linear, in_idx, out_idx) -> nn.Linear:
    w = _take(_take(m.weight.detach(), out_idx, 0), in_idx, 1)
    new = skip_init(type(m), w.shape[1], w.shape[0], bias=m.bias is not None)
    new.weight.data = w.clone()
    if m.bias is not None:
        new.bias.data = _take(m.bias.detach(), out_idx, 0).clone()
    return new


@register_slicer(nn.BatchNorm1d, nn.BatchNorm2d)
def slice_batchnorm(m: nn.modules.batchnorm._BatchNorm, in_idx, out_idx):
    idx = out_idx if out_idx is not None else in_idx
    new = copy.deepcopy(m)
    if idx is None:
        return new
    new.num_features = len(idx)
    for name in ("weight", "bias"):
        if getattr(m, name) is not None:
            getattr(new, name).data = getattr(m, name).detach().index_select(0, idx).clone()
    for name in ("running_mean", "running_var"):
        if getattr(m, name) is not None:
            setattr(new, name, getattr(m, name).index_select(0, idx).clone())
    return new


@register_slicer(nn.LSTM)
def slice_lstm(m: nn.LSTM, in_idx, out_idx) -> nn.LSTM:
    """Keep hidden units ``out_idx`` in all four gates (PyTorch's i, f, g, o row blocks)."""
    if m.num_layers != 1 or m.bidirectional or m.proj_size:
        raise NotImplementedError("only one-layer, one-directional LSTMs without projection are supported")
    h = m.hidden_size
    rows = None if out_idx is None else torch.cat([out_idx + g * h for g in range(4)])
    w_ih = _take(_take(m.weight_ih_l0.detach(), rows, 0), in_idx, 1)
    w_hh = _take(_take(m.weight_hh_l0.detach(), rows, 0), out_idx, 1)
    new = type(m)(w_ih.shape[1], w_hh.shape[1], bias=m.bias, batch_first=m.batch_first)
    new.weight_ih_l0.data, new.weight_hh_l0.data = w_ih.clone(), w_hh.clone()
    if m.bias:
        new.bias_ih_l0.data = _take(m.bias_ih_l0.detach(), rows, 0).clone()
        new.bias_hh_l0.data = _take(m.bias_hh_l0.detach(), rows, 0).clone()
    new.flatten_parameters()
    return new


def keep_count(ratio: float, units: int) -> int:
    """Units kept at a keep-ratio in (0, 1]; at least one unit always stays."""
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"keep-ratio must be in (0, 1], got {ratio}")
    return max(1, min(units, int(round(float(ratio) * units))))


def top_units(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores, in ascending index order (ties: lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return torch.sort(order[:n_keep]).values


def prune_model(model: nn.Sequential, layers: Sequence[PrunableLayer], keep: Sequence[torch.Tensor]) -> nn.Sequential:
    """A new, smaller model keeping unit indices ``keep[i]`` of ``layers[i]``."""
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
            new = slicer_for(module)(module, in_idx.get(pos), out_idx.get(pos))
            new.train(module.training)
        else:
            new = copy.deepcopy(module)
        new_modules.append(new)
    return nn.Sequential(*new_modules)


def widths_of(model: nn.Sequential, layers: Sequence[PrunableLayer]) -> list[int]:
    """Units of every prunable layer in a (possibly pruned) model."""
    return [unit_count(model[layer.position], out=True) for layer in layers]
