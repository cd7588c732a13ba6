"""Layer types: everything the project knows about one kind of module, in one class.

A :class:`LayerType` says what role a module plays in a sequential network (it owns units,
carries units per channel, passes them through, or flattens them), how many units it has,
which weights produce each unit (for magnitude statistics), how to slice its inputs and
outputs (surgery), and its FLOP terms (fvcore's rules). Structure, statistics, surgery and
cost all ask a :class:`LayerTypes` registry, and every :class:`~prune_env.pruner.Pruner`
owns its own registry (built-ins plus what the caller adds), as Torch-Pruning's
``DependencyGraph.register_customized_layer`` does. Supporting a new module type means
writing one subclass and passing it in; no other file changes::

    class Conv1dType(LayerType):
        modules = (nn.Conv1d,)
        ...

    env = PruningEnv(target, model=my_model, layer_types=[Conv1dType()])
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from enum import Enum

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

FlopTerms = tuple[tuple[float, int, int], ...]
"""FLOPs of a module as ``sum(coef * in_units**p * out_units**q)`` over its terms."""

OBSERVED_KINDS = ("conv", "linear", "lstm")
"""The layer families an observation one-hot encodes; every unit-owning type maps to one."""


class Role(Enum):
    """How a module treats the units of the prunable layer before it."""

    OWNS_UNITS = "owns units"  # conv, dense, LSTM: it has units and consumes the previous ones
    CARRIES_UNITS = "carries units"  # batch norm: one parameter set per unit, sliced alongside
    ACTIVATION = "activation"  # element-wise non-linearity: a layer's activation is read after it
    FLATTENS = "flattens"  # turns channels into channel x spatial features
    PASSES = "passes"  # pooling, dropout and any unregistered module: units pass unchanged


def take(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``t`` restricted to indices ``idx`` along ``dim`` (all of it when ``idx`` is None)."""
    return t if idx is None else t.index_select(dim, idx)


class LayerType:
    """Base class: a module type and everything structure, statistics, surgery and cost
    need to know about it. Subclasses set ``modules`` and ``role`` and override what their
    role needs (unit-owning types: all methods)."""

    modules: tuple[type[nn.Module], ...] = ()
    role: Role = Role.PASSES
    observed_kind: str = "linear"
    """Which of :data:`OBSERVED_KINDS` observations report for a unit-owning type."""
    channels_first: bool = False
    """Units lie on dimension 1 of the output (conv); otherwise on the last dimension."""

    # ---- structure -----------------------------------------------------------------
    def units(self, module: nn.Module, out: bool) -> int:
        """Output units (``out``) or input units of ``module``."""
        raise TypeError(f"{type(module).__name__} has no units")

    def kernel_and_stride(self, module: nn.Module) -> tuple[int, int]:
        return 1, 1

    # ---- statistics ----------------------------------------------------------------
    def unit_rows(self, module: nn.Module) -> torch.Tensor:
        """``(units, n)``: the weights that produce each output unit."""
        raise TypeError(f"{type(module).__name__} has no unit weights")

    # ---- surgery -------------------------------------------------------------------
    def slice(self, module: nn.Module, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None) -> nn.Module:
        """A new module keeping input units ``in_idx`` and output units ``out_idx``."""
        raise TypeError(f"{type(module).__name__} cannot be sliced")

    # ---- cost ----------------------------------------------------------------------
    def flop_terms(self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> FlopTerms:
        """fvcore's FLOPs of one example as terms in the input and output unit counts."""
        return ()

    def unit_extent(self, shape: tuple[int, ...]) -> int:
        """Units in a per-example activation shape of this type."""
        return shape[0] if self.channels_first else shape[-1]


class Conv2dType(LayerType):
    modules = (nn.Conv2d,)
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
        if module.groups != 1:
            raise NotImplementedError("grouped convolutions are not supported")
        w = take(take(module.weight.detach(), out_idx, 0), in_idx, 1)
        new = skip_init(type(module), w.shape[1], w.shape[0], module.kernel_size, stride=module.stride,
                        padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                        padding_mode=module.padding_mode)
        _copy_weight_and_bias(module, new, w, out_idx)
        return new

    def flop_terms(self, module, in_shape, out_shape):
        k = int(np.prod(module.kernel_size)) // module.groups
        return ((float(np.prod(out_shape[1:]) * k), 1, 1),)


class LinearType(LayerType):
    modules = (nn.Linear,)
    role = Role.OWNS_UNITS
    observed_kind = "linear"

    def units(self, module, out):
        return module.out_features if out else module.in_features

    def unit_rows(self, module):
        return module.weight.detach()

    def slice(self, module, in_idx, out_idx):
        w = take(take(module.weight.detach(), out_idx, 0), in_idx, 1)
        new = skip_init(type(module), w.shape[1], w.shape[0], bias=module.bias is not None)
        _copy_weight_and_bias(module, new, w, out_idx)
        return new

    def flop_terms(self, module, in_shape, out_shape):
        rows = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
        return ((float(rows), 1, 1),)


class LSTMType(LayerType):
    """One-layer, one-directional LSTM without projection; hidden unit j owns row j of each
    gate block (PyTorch's i, f, g, o) of both weight matrices."""

    modules = (nn.LSTM,)
    role = Role.OWNS_UNITS
    observed_kind = "lstm"

    def units(self, module, out):
        return module.hidden_size if out else module.input_size

    def unit_rows(self, module):
        h = module.hidden_size
        w = torch.cat([module.weight_ih_l0.detach(), module.weight_hh_l0.detach()], dim=1)  # (4H, E+H)
        return w.reshape(4, h, -1).permute(1, 0, 2).reshape(h, -1)

    def slice(self, module, in_idx, out_idx):
        if module.num_layers != 1 or module.bidirectional or module.proj_size:
            raise NotImplementedError("only one-layer, one-directional LSTMs without projection are supported")
        h = module.hidden_size
        rows = None if out_idx is None else torch.cat([out_idx + g * h for g in range(4)])
        w_ih = take(take(module.weight_ih_l0.detach(), rows, 0), in_idx, 1)
        w_hh = take(take(module.weight_hh_l0.detach(), rows, 0), out_idx, 1)
        with torch.random.fork_rng(devices=[]):  # its random init never moves torch's generator
            new = type(module)(w_ih.shape[1], w_hh.shape[1], bias=module.bias, batch_first=module.batch_first)
        new.weight_ih_l0.data, new.weight_hh_l0.data = w_ih.clone(), w_hh.clone()
        if module.bias:
            new.bias_ih_l0.data = take(module.bias_ih_l0.detach(), rows, 0).clone()
            new.bias_hh_l0.data = take(module.bias_hh_l0.detach(), rows, 0).clone()
        new.flatten_parameters()
        return new

    def flop_terms(self, module, in_shape, out_shape):
        steps = in_shape[0] if module.batch_first else in_shape[1]
        return ((4.0 * steps, 1, 1), (4.0 * steps, 0, 2))


class EmbeddingType(LayerType):
    """A lookup table; unit j is embedding dimension j (column j of the weight). An index
    input has no units to prune, so an embedding is always a network's first layer. fvcore
    counts no FLOPs for a lookup: its width costs FLOPs through its consumer's inputs."""

    modules = (nn.Embedding,)
    role = Role.OWNS_UNITS
    observed_kind = "linear"

    def units(self, module, out):
        return module.embedding_dim if out else module.num_embeddings

    def unit_rows(self, module):
        return module.weight.detach().t()

    def slice(self, module, in_idx, out_idx):
        if in_idx is not None:
            raise ValueError("an embedding's inputs are indices, not units: it must be the first layer")
        w = take(module.weight.detach(), out_idx, 1)
        new = skip_init(nn.Embedding, module.num_embeddings, w.shape[1], padding_idx=module.padding_idx,
                        max_norm=module.max_norm, norm_type=module.norm_type,
                        scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse)
        new.weight.data = w.clone()
        return new


class BatchNormType(LayerType):
    modules = (nn.BatchNorm1d, nn.BatchNorm2d)
    role = Role.CARRIES_UNITS
    channels_first = True

    def slice(self, module, in_idx, out_idx):
        idx = out_idx if out_idx is not None else in_idx
        new = copy.deepcopy(module)
        if idx is None:
            return new
        new.num_features = len(idx)
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                getattr(new, name).data = getattr(module, name).detach().index_select(0, idx).clone()
        for name in ("running_mean", "running_var"):
            if getattr(module, name) is not None:
                setattr(new, name, getattr(module, name).index_select(0, idx).clone())
        return new

    def flop_terms(self, module, in_shape, out_shape):
        per_channel = int(np.prod(in_shape[1:])) if len(in_shape) > 1 else 1
        return ((float(per_channel * (2 if module.affine else 1)), 1, 0),)


class ActivationType(LayerType):
    modules = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU)
    role = Role.ACTIVATION


class FlattenType(LayerType):
    modules = (nn.Flatten,)
    role = Role.FLATTENS


BUILTIN_LAYER_TYPES: tuple[LayerType, ...] = (
    Conv2dType(), LinearType(), LSTMType(), EmbeddingType(), BatchNormType(), ActivationType(), FlattenType(),
)


class LayerTypes:
    """A registry of layer types, owned by one pruner: the built-ins plus ``extra``
    (registered later, so they override built-ins for the same module class)."""

    def __init__(self, extra: Iterable[LayerType] = (), builtins: Sequence[LayerType] = BUILTIN_LAYER_TYPES):
        self._by_module: dict[type, LayerType] = {}
        self.extra: tuple[LayerType, ...] = ()
        """The types registered beyond the built-ins (to build another registry like this one)."""
        for layer_type in builtins:
            self._add(layer_type)
        for layer_type in extra:
            self.register(layer_type)

    def register(self, layer_type: LayerType) -> LayerType:
        """Add ``layer_type`` for each of its module classes (and their subclasses)."""
        self._add(layer_type)
        self.extra = (*self.extra, layer_type)
        return layer_type

    def _add(self, layer_type: LayerType) -> None:
        if not layer_type.modules:
            raise ValueError(f"{type(layer_type).__name__} names no module classes in `modules`")
        if layer_type.role is Role.OWNS_UNITS and layer_type.observed_kind not in OBSERVED_KINDS:
            raise ValueError(f"observed_kind must be one of {OBSERVED_KINDS}, got {layer_type.observed_kind!r}")
        for cls in layer_type.modules:
            self._by_module[cls] = layer_type

    def of(self, module: nn.Module) -> LayerType:
        """The type of ``module`` (closest registered class in its MRO); unregistered
        modules pass units through."""
        for cls in type(module).__mro__:
            if cls in self._by_module:
                return self._by_module[cls]
        return _PASSES

    def role(self, module: nn.Module) -> Role:
        return self.of(module).role


_PASSES = LayerType()


def _copy_weight_and_bias(old: nn.Module, new: nn.Module, weight: torch.Tensor, out_idx: torch.Tensor | None) -> None:
    new.weight.data = weight.clone()
    if old.bias is not None:
        new.bias.data = take(old.bias.detach(), out_idx, 0).clone()
