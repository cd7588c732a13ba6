"""Which layers of a sequential network can be pruned, and what depends on them.

Every target is an ``nn.Sequential``. A *prunable layer* is a module that owns units
(conv, dense, LSTM: :class:`~prune_env.layer_types.Role`) whose output units feed a later
unit-owning module (its *consumer*); the modules in between (batch norm, activations,
pooling, dropout, flatten) pass its units through. What each module does is asked of a
:class:`~prune_env.layer_types.LayerTypes` registry. Shapes are traced once with an
example input, so flatten's channel-to-feature expansion and every layer's spatial size
are known without running the network again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prune_env.layer_types import LayerTypes, Role


@dataclass(frozen=True)
class PrunableLayer:
    """A layer whose output units can be removed, and the modules that depend on them."""

    position: int
    """Index of the layer in the sequential model."""
    kind: str
    """Its family in observations: ``conv``, ``linear`` or ``lstm``."""
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
    unit_axis: int = 1
    """Dimension of a batched activation that indexes the units (1, or -1 for units last)."""

    @property
    def name(self) -> str:
        """The layer's module name in the sequential model (``model.get_submodule(name)``)."""
        return str(self.position)


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


def find_prunable_layers(model: nn.Sequential, example: torch.Tensor,
                         layer_types: LayerTypes | None = None) -> list[PrunableLayer]:
    """All prunable layers of ``model`` in order."""
    types = layer_types or LayerTypes()
    shapes = trace_shapes(model, example)
    modules = list(model)
    layers = []
    for pos, module in enumerate(modules):
        own = types.of(module)
        if own.role is not Role.OWNS_UNITS:
            continue
        channel_wise, activation_pos, per_unit, right_after = [], pos, 1, True
        for nxt in range(pos + 1, len(modules)):
            m = modules[nxt]
            role = types.role(m)
            if role is Role.OWNS_UNITS:
                if types.of(m).units(m, out=False) != own.units(module, out=True) * per_unit:
                    raise ValueError(f"cannot follow units of layer {pos} into layer {nxt}")
                kernel, stride = own.kernel_and_stride(module)
                layers.append(PrunableLayer(
                    position=pos, kind=own.observed_kind, units=own.units(module, out=True),
                    in_units=own.units(module, out=False), kernel=kernel, stride=stride,
                    channel_wise=tuple(channel_wise), consumer=nxt, features_per_unit=per_unit,
                    activation_position=activation_pos, out_shape=shapes[pos][1],
                    unit_axis=1 if own.channels_first else -1,
                ))
                break
            if role is Role.CARRIES_UNITS:
                channel_wise.append(nxt)
            right_after = right_after and role in (Role.CARRIES_UNITS, Role.ACTIVATION)
            if right_after:  # read activations after the norm and non-linearity that follow
                activation_pos = nxt
            if role is Role.FLATTENS:
                in_shape = shapes[nxt][0]
                per_unit *= int(np.prod(in_shape[1:])) if len(in_shape) > 1 else 1
    return layers
