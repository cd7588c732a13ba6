"""Pruning any network: channels coupled by residual additions, concatenations and
depthwise convolutions, found by Torch-Pruning's ``DependencyGraph`` and pruned together.

A :class:`GraphPruner` offers what :class:`~prune_env.pruner.Pruner` offers for
``nn.Sequential`` networks, with one *channel group* per prunable layer: the output
channels of a root convolution or linear layer and every channel tied to them (the
batch norms that carry them, the other convolutions summed into the same residual
stream, the depthwise convolutions that must follow). One env step decides one group.

- Surgery is Torch-Pruning's: each prune traces a copy of the network and prunes each
  group's removed channels through ``DependencyGraph.get_pruning_group``.
- FLOPs follow fvcore (:mod:`prune_env.cost`) from the kept counts alone: every
  convolution's, linear layer's and batch norm's channel counts are affine in the groups'
  counts (read from the groups' index lists), and the FLOPs of everything else fvcore
  counts (pooling, for one) are held at their unpruned value. Tests check the model
  against fvcore on pruned ResNets, MobileNetV2 and a concatenating network.
- Statistics: a unit's L1 norm sums the weights of every layer in the group that
  produces it; its activation is the mean absolute output of the group's batch norms
  (of its producing layers when it has none).

Grouped convolutions that are not depthwise (ResNeXt) keep all their channels: any group
that touches one is left out.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from prune_env.pruner import BasePruner
from prune_env.stats import LayerStats

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable layer of a :class:`GraphPruner`: a root layer's output channels and
    every module whose channels are tied to them."""

    name: str
    """The root module's name (``model.get_submodule(name)``)."""
    kind: str
    """``conv`` or ``linear`` (the root's family, for observations)."""
    units: int
    in_units: int
    kernel: int
    stride: int
    members: tuple[tuple[str, bool, tuple[int, ...], tuple[int, ...]], ...]
    """Per tied module: (name, whether its outputs are pruned, its channel indices, the
    root unit of each)."""


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, _CONV) and 1 < module.groups < module.out_channels


def _dependency_graph(model: nn.Module, example: torch.Tensor):
    import torch_pruning as tp

    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The last convolution or linear layer a forward pass runs: the output layer, whose
    units are the network's outputs and are never pruned."""
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
               for m in model.modules() if isinstance(m, (*_CONV, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order[-1:]


class GraphPruner(BasePruner):
    """Prunes copies of any ``model`` whose coupled channels Torch-Pruning can trace.

    The output layer (the last convolution or linear layer a forward pass runs) keeps its
    units; ``keep_layers`` names more modules whose output channels must stay. ``model`` is
    never modified.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, calibration_inputs: torch.Tensor | None = None,
                 keep_layers: Sequence[str] | None = None):
        self.model = model.eval()
        self.example = example[:1]
        self.calibration_inputs = calibration_inputs
        names = {m: n for n, m in model.named_modules()}
        keep = _output_layers(model, self.example)
        keep += [m for m in (model.get_submodule(n) for n in keep_layers or ()) if m not in keep]
        dg = _dependency_graph(model, self.example)
        groups = []
        for group in dg.get_all_groups(ignored_layers=keep, root_module_types=(*_CONV, nn.Linear)):
            members = []
            for item in group:
                module = item.dep.target.module
                if module in names:  # not one of Torch-Pruning's stand-ins for functional ops
                    members.append((names[module], dg.is_out_channel_pruning_fn(item.dep.handler),
                                    tuple(int(i) for i in item.idxs), tuple(int(i) for i in item.root_idxs)))
            root = group[0].dep.target.module
            if any(_is_grouped(model.get_submodule(n)) for n, *_ in members):
                continue
            groups.append(ChannelGroup(
                name=names[root], kind="conv" if isinstance(root, _CONV) else "linear",
                units=root.out_channels if isinstance(root, _CONV) else root.out_features,
                in_units=root.in_channels if isinstance(root, _CONV) else root.in_features,
                kernel=int(root.kernel_size[0]) if isinstance(root, _CONV) else 1,
                stride=int(root.stride[0]) if isinstance(root, _CONV) else 1,
                members=tuple(members)))
        order = {n: i for i, n in enumerate(names.values())}
        self.layers: list[ChannelGroup] = sorted(groups, key=lambda g: order[g.name])
        if not self.layers:
            raise ValueError("no prunable channels found: the network has no convolution or linear layer "
                             "besides its output layer")
        self.flop_model = GraphFlopModel(model, self.layers, self.example)

    @cached_property
    def stats(self) -> LayerStats:
        inputs = self.calibration_inputs if self.calibration_inputs is not None else self.example
        return LayerStats(activation=self._activations(inputs), l1=self._l1_norms())

    @staticmethod
    def _per_unit(group: ChannelGroup, values: dict[str, torch.Tensor], mean: bool) -> torch.Tensor:
        """Each root unit's sum (or mean) of ``values`` over the modules that produce it."""
        total = torch.zeros(group.units, dtype=torch.float64)
        count = torch.zeros(group.units, dtype=torch.float64)
        for name, is_out, idxs, roots in group.members:
            if name in values and is_out:
                total.index_add_(0, torch.tensor(roots), values[name].double()[list(idxs)])
                count.index_add_(0, torch.tensor(roots), torch.ones(len(roots), dtype=torch.float64))
        return (total / count.clamp(min=1) if mean else total).float()

    def _l1_norms(self) -> list[torch.Tensor]:
        norms = {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in self.model.named_modules()
                 if isinstance(m, (*_CONV, nn.Linear))}
        return [self._per_unit(g, norms, mean=False) for g in self.layers]

    @torch.no_grad()
    def _activations(self, inputs: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
        modules = dict(self.model.named_modules())
        watched = set()
        for g in self.layers:
            outs = [n for n, is_out, *_ in g.members if is_out]
            norms = [n for n in outs if isinstance(modules[n], _NORM)]
            watched.update(norms or [n for n in outs if isinstance(modules[n], (*_CONV, nn.Linear))])
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}

        def hook(name):
            unit_dim = -1 if isinstance(modules[name], nn.Linear) else 1  # features last, channels first

            def record(_module, _inputs, output):
                a = output.detach().abs().double()
                dim = unit_dim % a.dim()
                sums[name] = sums.get(name, 0) + a.sum(dim=[d for d in range(a.dim()) if d != dim]).cpu()
                counts[name] = counts.get(name, 0) + a.numel() // a.shape[dim]
            return record

        handles = [modules[n].register_forward_hook(hook(n)) for n in watched]
        try:
            for start in range(0, len(inputs), batch_size):
                self.model(inputs[start:start + batch_size])
        finally:
            for h in handles:
                h.remove()
        means = {n: sums[n] / counts[n] for n in sums}
        return [self._per_unit(g, means, mean=True) for g in self.layers]

    def prune_indices(self, keep: Sequence[Sequence[int] | torch.Tensor]) -> nn.Module:
        """A physically smaller copy keeping units ``keep[i]`` of each group."""
        if len(keep) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} index sets, got {len(keep)}")
        removed = []
        for group, idx in zip(self.layers, keep, strict=True):
            idx = {int(i) for i in torch.as_tensor(idx).reshape(-1).tolist()}
            if not idx or min(idx) < 0 or max(idx) >= group.units:
                raise ValueError(f"unit indices of {group.name} must be non-empty and within 0..{group.units - 1}")
            removed.append(sorted(set(range(group.units)) - idx))
        model = copy.deepcopy(self.model)
        if any(removed):
            dg = _dependency_graph(model, self.example)
            for group, idxs in zip(self.layers, removed, strict=True):
                if idxs:
                    root = model.get_submodule(group.name)
                    dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()
        return model.eval()

    def widths_of(self, model: nn.Module) -> list[int]:
        """Units of every group's root in a (possibly pruned) copy of the model."""
        widths = []
        for group in self.layers:
            root = model.get_submodule(group.name)
            widths.append(int(root.out_channels if isinstance(root, _CONV) else root.out_features))
        return widths


class GraphFlopModel:
    """fvcore's FLOPs of a :class:`GraphPruner`'s network from its groups' kept counts.

    Each convolution, linear layer and batch norm has input and output channel counts that
    are affine in the counts (``base - sum_g per_unit * (units_g - counts_g)``, read from
    the groups' index lists); its FLOPs follow fvcore's formula for its kind. FLOPs of
    anything else fvcore counts are held at their unpruned value (``fixed``).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], example: torch.Tensor):
        from prune_env.cost import count_flops

        self.units = np.array([g.units for g in groups], dtype=np.int64)
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        modules = {n: m for n, m in model.named_modules() if isinstance(m, (*_CONV, nn.Linear, *_NORM))}

        def hook(name):
            def record(_module, inputs, output):
                shapes[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
        try:
            with torch.no_grad():
                model.eval()(example[:1])
        finally:
            for h in handles:
                h.remove()
        # FLOPs are sum(coef * cin * cout) over convolutions and linear layers, plus
        # sum(coef * c) over depthwise convolutions and batch norms, where each channel count
        # is its unpruned value less, per group, the channels it loses per unit removed
        bilinear, linear = [], []
        for name, module in modules.items():
            if name not in shapes:
                continue
            in_shape, out_shape = shapes[name]
            loss_in, loss_out = np.zeros(len(groups)), np.zeros(len(groups))
            for g, group in enumerate(groups):
                for member, is_out, idxs, _ in group.members:
                    if member == name:
                        (loss_out if is_out else loss_in)[g] += len(idxs) / group.units
            if isinstance(module, _CONV):
                per_out = float(np.prod(out_shape[1:])) * float(np.prod(module.kernel_size))
                if module.groups == module.in_channels > 1:  # depthwise: in, out and groups move together
                    linear.append((per_out, module.out_channels, np.maximum(loss_in, loss_out)))
                else:
                    bilinear.append((per_out / module.groups, module.in_channels, loss_in, module.out_channels,
                                     loss_out))
            elif isinstance(module, nn.Linear):
                bilinear.append((float(np.prod(in_shape[:-1])), module.in_features, loss_in, module.out_features,
                                 loss_out))
            else:  # batch norm, eval mode: fvcore counts 1 (2 with affine) per element
                linear.append((float(np.prod(in_shape[1:])) * (2 if module.affine else 1), module.num_features,
                               np.maximum(loss_in, loss_out)))
        empty = np.zeros((0, len(groups)))
        self._bi_coef = np.array([b[0] for b in bilinear])
        self._bi_in = np.array([b[1] for b in bilinear], dtype=np.float64)
        self._bi_in_loss = np.array([b[2] for b in bilinear]) if bilinear else empty
        self._bi_out = np.array([b[3] for b in bilinear], dtype=np.float64)
        self._bi_out_loss = np.array([b[4] for b in bilinear]) if bilinear else empty
        self._lin_coef = np.array([x[0] for x in linear])
        self._lin_c = np.array([x[1] for x in linear], dtype=np.float64)
        self._lin_loss = np.array([x[2] for x in linear]) if linear else empty
        known = self._known(self.units)
        self.fixed = float(count_flops(model, example[:1])) - known
        self.base = known + self.fixed

    def _known(self, counts: np.ndarray) -> float:
        removed = self.units - np.asarray(counts, dtype=np.float64)
        cin = self._bi_in - self._bi_in_loss @ removed
        cout = self._bi_out - self._bi_out_loss @ removed
        c = self._lin_c - self._lin_loss @ removed
        return float(self._bi_coef @ (cin * cout) + self._lin_coef @ c)

    def flops(self, counts: Sequence[int] | np.ndarray) -> float:
        """Total FLOPs (batch 1) when group ``i`` keeps ``counts[i]`` units."""
        return self._known(np.asarray(counts)) + self.fixed

    def layer_flops(self, counts: Sequence[int] | np.ndarray) -> np.ndarray:
        """FLOPs each group's units cost: the drop in total FLOPs were the group removed
        whole, at the other groups' given counts."""
        counts = np.asarray(counts, dtype=np.float64)
        total = self._known(counts)
        out = np.zeros(len(self.units))
        for g in range(len(self.units)):
            without = counts.copy()
            without[g] = 0
            out[g] = total - self._known(without)
        return out
