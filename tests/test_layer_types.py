"""A module type the project does not ship is supported by one LayerType class: found,
measured, sliced exactly and counted like fvcore, through an instance registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prune_env.cost import count_flops, count_params
from prune_env.env import PruningEnv
from prune_env.layer_types import BUILTIN_LAYER_TYPES, LayerType, LayerTypes, Role, take
from prune_env.pruner import Pruner
from prune_env.structure import find_prunable_layers
from prune_env.surgery import prune_model, widths_of
from tests.helpers import ModelTarget


class Conv1dType(LayerType):
    """Everything the project needs to know about ``nn.Conv1d``, in one place."""

    modules = (nn.Conv1d,)
    role = Role.OWNS_UNITS
    observed_kind = "conv"
    channels_first = True

    def units(self, module, out):
        return module.out_channels if out else module.in_channels

    def kernel_and_stride(self, module):
        return module.kernel_size[0], module.stride[0]

    def unit_rows(self, module):
        return module.weight.detach().flatten(1)

    def slice(self, module, in_idx, out_idx):
        w = take(take(module.weight.detach(), out_idx, 0), in_idx, 1)
        new = nn.Conv1d(w.shape[1], w.shape[0], module.kernel_size, stride=module.stride, padding=module.padding,
                        bias=module.bias is not None)
        new.weight.data = w.clone()
        if module.bias is not None:
            new.bias.data = take(module.bias.detach(), out_idx, 0).clone()
        return new

    def flop_terms(self, module, in_shape, out_shape):
        return ((float(out_shape[1] * module.kernel_size[0]), 1, 1),)


def _conv1d_net() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Conv1d(16, 12, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(12 * 10, 8), nn.ReLU(), nn.Linear(8, 3),
    ).eval()
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(5, 4, 20)


def test_unregistered_type_is_not_prunable_and_registry_is_per_instance():
    model, x = _conv1d_net()
    assert [layer.position for layer in find_prunable_layers(model, x)] == [7]  # only the dense layer
    assert [layer.position for layer in Pruner(model, x, layer_types=[Conv1dType()]).layers] == [0, 3, 7]
    assert len(Pruner(model, x).layers) == 1  # registering on one pruner did not leak into another


def test_added_type_prunes_exactly_and_counts_like_fvcore():
    model, x = _conv1d_net()
    types = LayerTypes([Conv1dType()])
    layers = find_prunable_layers(model, x, types)
    assert [(layer.kind, layer.units, layer.features_per_unit) for layer in layers] == [
        ("conv", 16, 1), ("conv", 12, 10), ("linear", 8, 1)]
    assert layers[0].channel_wise == (1,) and layers[0].activation_position == 2
    # zero every outgoing weight of some units: removing them must not change the outputs
    rng = np.random.default_rng(0)
    keep = []
    with torch.no_grad():
        for layer in layers:
            dead = torch.from_numpy(rng.choice(layer.units, size=layer.units // 3, replace=False))
            f = layer.features_per_unit
            cols = (dead[:, None] * f + torch.arange(f)).reshape(-1)
            model[layer.consumer].weight[:, cols] = 0
            keep.append(torch.tensor(sorted(set(range(layer.units)) - set(dead.tolist()))))
    before = model(x)
    pruned = prune_model(model, layers, keep, types)
    assert widths_of(pruned, layers, types) == [len(k) for k in keep]
    assert isinstance(pruned[0], nn.Conv1d) and pruned[1].num_features == len(keep[0])
    torch.testing.assert_close(pruned(x), before, rtol=1e-5, atol=1e-5)
    # the FLOP model built from the added type's terms agrees with fvcore on the pruned net
    pruner = Pruner(model, x, layer_types=[Conv1dType()])
    assert pruner.flop_model.flops(np.array([len(k) for k in keep])) == count_flops(pruned, x[:1])
    assert pruner.flop_model.base == count_flops(model, x[:1])
    assert count_params(pruned) < count_params(model)


def test_added_type_gets_statistics_and_env_observations():
    model, x = _conv1d_net()
    target = ModelTarget(lambda: _conv1d_net()[0], torch.randn(64, 4, 20))
    pruner = Pruner(model, x, calibration_inputs=torch.randn(32, 4, 20), layer_types=[Conv1dType()])
    assert [len(a) for a in pruner.stats.activation] == [16, 12, 8]
    assert torch.equal(pruner.stats.l1[0], model[0].weight.detach().abs().sum((1, 2)))
    env = PruningEnv(target, model=model, flops_budget=0.5, layer_types=[Conv1dType()])
    obs, info = env.reset(seed=0)
    assert info["layer"] == 0 and obs[1] == 1.0  # observed as a conv
    done = False
    while not done:
        obs, reward, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert abs(info["report"]["flops_ratio"] - 0.5) < 0.05


def test_registry_rejects_types_without_modules_or_with_unknown_kinds():
    class Nameless(LayerType):
        role = Role.OWNS_UNITS

    class Odd(Conv1dType):
        observed_kind = "attention"

    with pytest.raises(ValueError, match="names no module"):
        LayerTypes([Nameless()])
    with pytest.raises(ValueError, match="observed_kind"):
        LayerTypes([Odd()])
    assert LayerTypes().of(nn.Dropout()).role is Role.PASSES
    assert {type(t).__name__ for t in BUILTIN_LAYER_TYPES} >= {"Conv2dType", "LinearType", "LSTMType"}
