"""Which layers of a sequential network can be pruned, and what depends on them.

Every target is an ``nn.Sequential``. A *prunable layer* is a conv, dense or LSTM layer
whose output units feed a later conv, dense or LSTM layer (its *consumer*); the modules in
between (batch norm, activations, pooling, dropout, flatten) pass its units through.
Shapes are traced once with an example input, so flatten's channel-to-feature expansion
and every layer's spatial size are known without running the network again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

WEIGHTED = (nn.Conv2d, nn.Linear, nn.LSTM)
"""Module types that own units (output channels, features, hidden units)."""
CHANNEL_WISE = (nn.BatchNorm1d, nn.BatchNorm2d)
"""Modules with per-unit parameters that pass their input units through."""
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU)


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose output units can be removed, and the modules that depend on them."""

    position: int
    """Index of the layer in the sequential model."""
    kind: str
    """``conv``, ``linear`` or ``lstm``."""
    units: int
    """Output units of the unpruned layer."""
    in_units: int
    """Input units (channels, features) of the unpruned layer."""
    kernel: int
    stride: int
    channel_wise: tuple[int, ...]
    """Positions of batch-norm modules that carry these units."""
    consumer: int
    """Position of the next weighted layer, whose inputs are these units."""
    features_per_unit: int
    """Inputs of the consumer per unit (spatial size when a flatten lies between)."""
    activation_position: int
    """Position of the module whose output is read as this layer's activation (NGF)."""
    out_shape: tuple[int, ...]
    """Output shape of one example (channels first for conv)."""


def kind_of(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.Linear):
        return "linear"
    raise TypeError(f"{type(module).__name__} is not a weighted layer")


def unit_count(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    if isinstance(module, nn.LSTM):
        return module.hidden_size if out else module.input_size
    raise TypeError(type(module).__name__)


@torch.no_grad()
def trace_shapes(model: nn.Sequential, example: torch.Tensor) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per-example (input shape, output shape) of every module of ``model``."""
    if not isinstance(model, nn.Sequential):
        raise TypeError("prune-env prunes nn.Sequential models; wrap the network in one")
    shapes = []
    x = example[:1]
    was_training = model.training
    model.eval()
    for module in model:
        y = module(x)
        shapes.append((tuple(x.shape[1:]), tuple(y.shape[1:])))
        x = y
    model.train(was_training)
    return shapes


def find_prunable_layers(model: nn.Sequential, example: torch.Tensor) -> list[PrunableLayer]:
    """All prunable layers of ``model`` in order."""
    shapes = trace_shapes(model, example)
    modules = list(model)
    layers = []
    for pos, module in enumerate(modules):
        if not isinstance(module, WEIGHTED):
            continue
        channel_wise, activation_pos, per_unit, right_after = [], pos, 1, True
        for nxt in range(pos + 1, len(modules)):
            m = modules[nxt]
            if isinstance(m, WEIGHTED):
                if unit_count(m, out=False) != unit_count(module, out=True) * per_unit:
                    raise ValueError(f"cannot follow units of layer {pos} into layer {nxt}")
                layers.append(PrunableLayer(
                    position=pos, kind=kind_of(module), units=unit_count(module, out=True),
                    in_units=unit_count(module, out=False),
                    kernel=module.kernel_size[0] if isinstance(module, nn.Conv2d) else 1,
                    stride=module.stride[0] if isinstance(module, nn.Conv2d) else 1,
                    channel_wise=tuple(channel_wise), consumer=nxt, features_per_unit=per_unit,
                    activation_position=activation_pos, out_shape=shapes[pos][1],
                ))
                break
            if isinstance(m, CHANNEL_WISE):
                channel_wise.append(nxt)
            right_after = right_after and isinstance(m, (*CHANNEL_WISE, *ACTIVATIONS))
            if right_after:  # read activations after the norm and non-linearity that follow
                activation_pos = nxt
            if isinstance(m, nn.Flatten):
                in_shape = shapes[nxt][0]
                per_unit *= int(torch.tensor(in_shape[1:]).prod().item()) if len(in_shape) > 1 else 1
    return layers

