"""What a network costs: FLOPs (fvcore's count), parameters and measured latency.

FLOPs follow fvcore: one multiply-add is one flop; batch norm in eval mode counts two per
element; element-wise activations and pooling count nothing. fvcore has no counter for
``aten::lstm``, so :func:`lstm_flop_jit` adds one: ``B * T * 4H * (E + H)`` (the gate
matrix products). :class:`FlopModel` gives the same totals from unit counts alone, fast
enough to call inside every environment step; tests check it against fvcore.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from prune_env.layer_types import LayerTypes
from prune_env.structure import PrunableLayer, trace_shapes
from target_models.device import (
    autocast,
    autocast_enabled,
    module_device,
    on_device,
    synchronizer,
    to_device,
)


def lstm_flop_jit(inputs, outputs) -> int:
    """fvcore handle for ``aten::lstm``: multiply-adds of the four gates over all steps."""
    from fvcore.nn.jit_handles import get_shape

    x_shape = get_shape(inputs[0])
    batch_first = inputs[-1].toIValue()
    out_shape = get_shape(outputs[0])
    batch, steps = (x_shape[0], x_shape[1]) if batch_first else (x_shape[1], x_shape[0])
    input_size, hidden = x_shape[2], out_shape[2]
    return batch * steps * 4 * hidden * (input_size + hidden)


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """fvcore's FLOP count of ``model`` on ``example`` (eval mode), LSTM included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its import calls torch.jit.script, deprecated in torch 2.x
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(model, example).set_op_handle("aten::lstm", lstm_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
    model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters that are not zero: what unstructured pruning leaves."""
    return sum(int((p != 0).sum()) for p in model.parameters())


@dataclass(frozen=True)
class _ModuleCost:
    """FLOPs of one module as ``sum(coef * cin**p * cout**q)``."""

    terms: tuple[tuple[float, int, int], ...]
    in_layer: int | None  # index (into the prunable layers) of the layer feeding its inputs
    in_fixed: int  # inputs when no prunable layer feeds them
    in_factor: int  # inputs per unit of in_layer (spatial size after a flatten)
    out_layer: int | None
    out_fixed: int


class FlopModel:
    """FLOPs of a sequential model as a function of the unit counts of its prunable layers."""

    def __init__(self, model: nn.Sequential, layers: Sequence[PrunableLayer], example: torch.Tensor,
                 layer_types: LayerTypes | None = None):
        types = layer_types or LayerTypes()
        shapes = trace_shapes(model, example)
        feeding: dict[int, tuple[int, int]] = {}  # position -> (layer index, inputs per unit)
        for i, layer in enumerate(layers):
            for pos in (*layer.channel_wise, layer.consumer):
                feeding[pos] = (i, layer.features_per_unit if pos == layer.consumer else 1)
        own = {layer.position: i for i, layer in enumerate(layers)}
        self.units = np.array([layer.units for layer in layers], dtype=np.int64)
        self._costs = []
        for pos, module in enumerate(model):
            kind = types.of(module)
            terms = kind.flop_terms(module, *shapes[pos])
            if not terms:
                continue
            in_layer, factor = feeding.get(pos, (None, 1))
            in_fixed, out_fixed = kind.unit_extent(shapes[pos][0]), kind.unit_extent(shapes[pos][1])
            self._costs.append(_ModuleCost(terms, in_layer, in_fixed, factor, own.get(pos), out_fixed))
        self.base = self.flops(self.units)

    def flops(self, counts: Sequence[int] | np.ndarray) -> float:
        """Total FLOPs (batch 1) when prunable layer ``i`` keeps ``counts[i]`` units."""
        total = 0.0
        for c in self._costs:
            cin = c.in_fixed if c.in_layer is None else counts[c.in_layer] * c.in_factor
            cout = c.out_fixed if c.out_layer is None else counts[c.out_layer]
            total += sum(coef * cin**p * cout**q for coef, p, q in c.terms)
        return total

    def layer_flops(self, counts: Sequence[int] | np.ndarray) -> np.ndarray:
        """FLOPs of each prunable layer itself (its own module) at the given counts."""
        out = np.zeros(len(self.units))
        for c in self._costs:
            if c.out_layer is None:
                continue
            cin = c.in_fixed if c.in_layer is None else counts[c.in_layer] * c.in_factor
            out[c.out_layer] += sum(coef * cin**p * counts[c.out_layer]**q for coef, p, q in c.terms)
        return out


TIMING_STATISTICS = ("median", "min")


def wall_ms(call: Callable[[], object], repeats: int = 20, warmup: int = 3, warmup_seconds: float = 0.2,
            statistic: str = "median") -> float:
    """Wall time of ``call()`` in milliseconds over ``repeats`` runs, after at least
    ``warmup`` untimed runs and ``warmup_seconds`` of them (a cold first run of a fresh
    model or session is several times slower than a warm one). The one timer of the
    project: PyTorch and onnxruntime latencies both come from it. ``statistic``: the
    ``median`` run (what a user sees, other processes' load included) or the fastest one
    (``min``: the network's own cost, the estimate least moved by other processes on a
    shared machine, as ``timeit`` advises)."""
    if statistic not in TIMING_STATISTICS:
        raise ValueError(f"unknown timing statistic {statistic!r}; choose one of: {', '.join(TIMING_STATISTICS)}")
    started = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - started < warmup_seconds:
        call()
        done += 1
    return float(over_rounds(time_alternating([call], repeats, warmup=0), statistic)[0])


def time_alternating(calls: Sequence[Callable[[], object]], passes: int, warmup: int = 3,
                     seed: int = 0, desc: str | None = None) -> np.ndarray:
    """Milliseconds of single runs of several calls, alternating: after ``warmup`` untimed
    runs of each, every pass runs each call once, in a fresh random order (``seed``). On a
    shared machine the speed drifts over seconds (the CNN's batch-64 forward took 73-117 ms
    within one minute); alternating single runs spread every slow spell over all calls
    alike, where timing each call's runs back to back lets a spell lift one call (the CNN's
    end-to-end timings then spread by 46-53% over rounds). Returns an array of shape
    (passes, len(calls)); reduce it over axis 0 with :func:`over_rounds`. ``desc``: show a
    progress bar over the passes with this label."""
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    for call in calls:
        for _ in range(warmup):
            call()
    order = np.random.default_rng(seed)
    times = np.zeros((passes, len(calls)))
    for p in tqdm(range(passes), desc=desc, disable=desc is None):
        for i in order.permutation(len(calls)):
            start = time.perf_counter()
            calls[i]()
            times[p, i] = time.perf_counter() - start
    return 1000 * times


def over_rounds(times: np.ndarray, statistic: str = "median") -> np.ndarray:
    """Each call's figure from :func:`time_alternating`'s passes, by ``statistic``."""
    if statistic not in TIMING_STATISTICS:
        raise ValueError(f"unknown timing statistic {statistic!r}; choose one of: {', '.join(TIMING_STATISTICS)}")
    return np.median(times, axis=0) if statistic == "median" else np.min(times, axis=0)


def forward_call(model: nn.Module, example: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """A timeable call: one forward pass of ``model`` (already on ``device``; put in eval
    mode) on ``example``, without gradients, waiting for the device to finish."""
    model.eval()
    x = to_device(example, device)
    sync = synchronizer(device)

    def forward() -> None:
        with torch.no_grad():
            model(x)
        sync()

    return forward


def measure_latency(model: nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3,
                    mixed_precision: bool = False, device: torch.device | None = None,
                    statistic: str = "median") -> dict:
    """Wall time of a forward pass (warm; :func:`wall_ms`'s ``statistic``) on ``device``
    (default: where the model is; a CUDA run waits for the GPU to finish), with the batch
    size and threads used."""
    device = device or module_device(model)
    with on_device(model, device), autocast(device, mixed_precision):
        ms = wall_ms(forward_call(model, example, device), repeats, warmup, statistic=statistic)
    return {"ms": ms, "batch_size": int(example.shape[0]), "device": str(device),
            "threads": torch.get_num_threads(), "repeats": repeats, "mixed_precision": autocast_enabled(device, mixed_precision),
            "statistic": statistic}


def onnx_call(path: str | Path, example: torch.Tensor) -> Callable[[], object]:
    """A timeable call: onnxruntime (CPU, as many intra-op threads as torch uses) running
    the ONNX file at ``path`` (input named ``input``, as :func:`prune_env.export.export_onnx`
    writes it) on ``example``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": example.numpy()}
    return lambda: session.run(None, feed)


def onnx_latency(path: str | Path, example: torch.Tensor, repeats: int = 20, warmup: int = 3,
                 warmup_seconds: float = 0.2, statistic: str = "median") -> float:
    """Milliseconds (:func:`wall_ms`'s ``statistic``) of :func:`onnx_call`."""
    return wall_ms(onnx_call(path, example), repeats, warmup, warmup_seconds, statistic)
