"""A per-layer latency lookup table (NetAdapt): predict any allocation's latency on this
device without timing it.

A sequential network is cut into *blocks*, one per prunable layer: the layer and the
modules that follow it up to the next prunable layer (batch norm, activation, pooling,
flatten; the first block also runs whatever precedes the first layer), plus a *tail*
(the output layer and what follows). Block ``i``'s time depends on
its input width (layer ``i-1``'s kept units) and its output width (layer ``i``'s). The
table times every block on a grid of widths, on the device, at one batch size, thread
count and engine (PyTorch eager, or onnxruntime), and predicts an allocation's latency as
the sum of its blocks' times, interpolated bilinearly between grid widths. At grid widths
the prediction is exactly the sum of the table's entries. Each block's times are made
non-decreasing in both widths (a running maximum), so that timing noise never makes a
wider layer predict faster: the budget clamp needs a cost that rises with every count.
Blocks timed alone miss what runs between them, so the whole network is also timed at the
grid's smallest and full widths, and every entry is mapped linearly (scale, and a shift
on the tail) so that the table predicts those two timings exactly. The whole network is
also timed at :data:`CALIBRATION_ALLOCATIONS` random allocations (a fixed seed, each
layer's count uniform between its smallest and full widths), and the summed blocks are
mapped through a monotone piecewise-linear curve onto them (the medians of
:data:`CURVE_KNOTS` groups, ordered by prediction): the prediction's error then no longer
depends on how far a network lies from both ends. Random allocations, not uniform ones:
at batch 64 on VGG16, networks whose layers all keep the same fraction (aligned counts or
not) took 15-33% less time than random ones whose blocks sum to the same (BENCHMARKS.md).

Counts that are multiples of :data:`ALIGNMENT` can run markedly faster than their
neighbours (CPU kernels work on blocks of channels), so the widths the table times stand for the
counts a search picks: off those multiples for an env without rounding, multiples of
``round_to`` for one with it (a table per ``round_to``). Kernels also work on channels in
blocks of :data:`CHANNEL_BLOCK`, so time is a staircase in a layer's width: a narrow layer's
grid holds both sides of every step.

A table is built once, with a progress bar, and cached under ``$PRUNE_ENV_HOME/latency``
by target name, architecture (a hash of the module's printout and the example input's shape
and dtype), widths, device, batch size, threads, engine, timing statistic (the median
run, or the fastest: :func:`prune_env.cost.wall_ms`) and timing rounds; a table measured
with other settings is never reused. Cells are timed in alternating passes (every cell once
per pass, in a random order: :func:`prune_env.cost.time_alternating`): on a shared machine
the speed drifts over seconds, and timing each cell's runs back to back let a slow spell
lift some cells and not others.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from prune_env.cost import TIMING_STATISTICS, forward_call, onnx_call, over_rounds, time_alternating
from prune_env.env import allowed_counts
from prune_env.pruner import BasePruner, Pruner
from target_models.checkpoints import atomic_write_bytes, home_dir
from target_models.device import module_device, torch_threads

ENGINES = ("torch", "onnxruntime")
CALIBRATION_ALLOCATIONS = 9
"""Random allocations at which the whole network is timed to set the calibration curve."""
CALIBRATION_SEED = 20_241
"""Their seed: not one a check of the table (``bench_latency.py --table``, seed 0) draws."""
CURVE_KNOTS = 3
"""Groups of calibration allocations, each one knot of the curve (its medians)."""
ALIGNMENT = 8
"""Counts that are multiples of this run faster: VGG16 pruned uniformly to half its FLOPs ran
1.7x faster than unpruned in onnxruntime at batch 64 with every count rounded to 8, and
0.6-1.1x with any count; the CNN's rounded networks ran 2-12% faster than predicted
(BENCHMARKS.md, "Latency-aware against FLOPs-aware search")."""


CHANNEL_BLOCK = 16
"""CPU kernels (oneDNN's fp32 convolutions on this AVX-512 machine) work on channels in blocks of
16: a convolution's time is a staircase in its input and output widths, flat within a block
and a step up past each multiple of 16. The CNN's second convolution at batch 64, one thread:
29-34 ms with 8-16 input channels, 40-43 ms with 17-32, 53 ms with 33; 19-21 ms with 40-48
output channels, 25-27 ms with 49-64, 32 ms with 65."""
BRACKETED_STEPS = 4
"""Layers with at most this many steps within their widths are timed on both sides of each
(the CNN's and VGG16's 32- and 64-channel convolutions); wider layers' steps are small against
their width, and an even grid interpolates over them."""


def as_searched(count: float, low: int, units: int, round_to: int | None = None) -> int:
    """The count a search would keep near ``count``: with ``round_to``, the nearest count the
    env allows (a multiple of it, or all ``units``); without, ``count`` rounded and moved one
    unit down when it lands on a multiple of :data:`ALIGNMENT` (``low`` and ``units`` stay)."""
    if round_to and round_to > 1:
        allowed = allowed_counts(units, low, round_to)
        return int(allowed[np.argmin(np.abs(allowed - count))])
    count = int(np.clip(round(count), low, units))
    return count - 1 if count % ALIGNMENT == 0 and low < count < units else count


def grid_widths(low: int, units: int, points: int, round_to: int | None = None) -> np.ndarray:
    """The widths a layer's blocks are timed at, each the count a search would keep there
    (:func:`as_searched`): ``points`` widths from ``low`` to ``units``, evenly spaced and
    distinct; or, for a layer with at most :data:`BRACKETED_STEPS` multiples of
    :data:`CHANNEL_BLOCK` between them, ``low``, ``units`` and both sides of every such step
    (each multiple itself and the next count allowed): interpolating across a step would put
    the jump in the middle of a flat stretch."""
    steps = [k for k in range(CHANNEL_BLOCK, units, CHANNEL_BLOCK) if k > low]
    if steps and len(steps) <= BRACKETED_STEPS:
        # the last count of each block and the next count allowed: a search keeps a multiple of 16
        # (half of 32 channels) often, and it runs with its block, not halfway up the step
        widths = [low, units, *(w for k in steps for w in (k, k + (round_to or 1)))]
        if not round_to or round_to == 1:
            return np.unique(widths).astype(np.int64)
    else:
        widths = np.linspace(low, units, max(2, points))
    return np.unique([as_searched(w, low, units, round_to) for w in widths]).astype(np.int64)


def _interpolate(grid_in: np.ndarray, grid_out: np.ndarray, table: np.ndarray, a: float, b: float) -> float:
    """Bilinear interpolation of ``table[i, j]`` (at ``grid_in[i]``, ``grid_out[j]``) at (a, b)."""

    def weights(grid: np.ndarray, x: float) -> tuple[int, int, float]:
        if len(grid) == 1:
            return 0, 0, 0.0
        j = int(np.clip(np.searchsorted(grid, x) - 1, 0, len(grid) - 2))
        return j, j + 1, float(np.clip((x - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0))

    i0, i1, wi = weights(grid_in, a)
    j0, j1, wj = weights(grid_out, b)
    return float((1 - wi) * ((1 - wj) * table[i0, j0] + wj * table[i0, j1])
                 + wi * ((1 - wj) * table[i1, j0] + wj * table[i1, j1]))


def _timeable(engine: str, module: nn.Module, x: torch.Tensor, device: torch.device, folder: Path,
              name: str) -> Callable[[], object]:
    """A call that runs ``module`` on ``x`` once with ``engine`` (onnxruntime: exported to
    ``folder``/``name``.onnx), for :func:`prune_env.cost.time_alternating`."""
    if engine == "onnxruntime":
        from prune_env.export import export_onnx

        path = folder / f"{name}.onnx"
        export_onnx(module.eval(), x, path)
        return onnx_call(path, x)
    return forward_call(module.to(device), x, device)


class LatencyTable:
    """Predicted latency (ms per forward pass of ``batch_size`` examples) of a sequential
    network as a function of its layers' kept unit counts.

    ``widths`` gives each layer's grid (default: ``points`` widths from ``low[i]`` to its
    units). Build with :meth:`build` (cached) or :meth:`measure`.
    """

    def __init__(self, grids: list[np.ndarray], blocks: list[np.ndarray], tail: np.ndarray, settings: dict):
        self.grids, self.blocks, self.tail, self.settings = grids, blocks, tail, settings
        self.curve = settings.get("calibration", {}).get("curve")
        """Summed blocks -> whole-network ms (``predicted_ms``, ``measured_ms``), or None."""
        self.units = np.array([int(g[-1]) for g in grids])
        self.base = self.predict(self.units)

    # ---- prediction --------------------------------------------------------------------
    def layer_times(self, counts: Sequence[int]) -> np.ndarray:
        """Predicted ms of each block (the tail last) at ``counts``."""
        times = []
        for i, table in enumerate(self.blocks):
            a = counts[i - 1] if i > 0 else 0
            grid_in = self.grids[i - 1] if i > 0 else np.zeros(1)
            times.append(_interpolate(grid_in, self.grids[i], table, a, counts[i]))
        times.append(_interpolate(self.grids[-1], np.zeros(1), self.tail[:, None], counts[-1], 0))
        return np.array(times)

    def predict(self, counts: Sequence[int]) -> float:
        """Predicted ms of the whole network at ``counts`` (one per prunable layer): the
        blocks' times summed, then mapped through the calibration curve when the table has one
        (whole-network timings between the smallest and full widths; the identity at both)."""
        total = float(self.layer_times(counts).sum())
        if self.curve is None:
            return total
        return float(np.interp(total, self.curve["predicted_ms"], self.curve["measured_ms"]))

    def entries_sum(self) -> float:
        """The table's entries at full widths, summed (equals ``base``)."""
        return float(sum(b[-1, -1] for b in self.blocks) + self.tail[-1])

    # ---- measurement -------------------------------------------------------------------
    @classmethod
    def measure(cls, pruner: BasePruner, batch_size: int = 1, engine: str = "torch",
                device: torch.device | str | None = None, points: int = 6, low: Sequence[int] | None = None,
                repeats: int = 10, show_progress: bool = True, statistic: str = "median",
                rounds: int = 1, round_to: int | None = None, threads: int | None = None) -> LatencyTable:
        """Time every block of ``pruner``'s network on its grid of widths, and the whole
        network at the calibration allocations: each cell takes the ``statistic`` of
        ``repeats * rounds`` single runs (see :func:`prune_env.cost.wall_ms`), timed in passes
        that run every cell and calibration network once, in a random order
        (:func:`prune_env.cost.time_alternating`), so that a slow spell of the machine lifts
        every cell alike instead of some. ``round_to``: the env's rounding; the grid
        and the calibration networks then keep multiples of it (:func:`as_searched`). ``threads``:
        torch's thread count while timing (default: the count in force)."""
        with torch_threads(threads):
            return cls._measure(pruner, batch_size, engine, device, points, low, repeats, show_progress, statistic,
                                rounds, round_to)

    @classmethod
    def _measure(cls, pruner: BasePruner, batch_size: int, engine: str, device, points: int,
                 low: Sequence[int] | None, repeats: int, show_progress: bool, statistic: str, rounds: int,
                 round_to: int | None) -> LatencyTable:
        if not isinstance(pruner, Pruner):
            raise ValueError("latency tables cover sequential networks (nn.Sequential targets); this network is "
                             "pruned through a dependency graph")
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        if engine not in ENGINES:
            raise ValueError(f"unknown latency engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        if statistic not in TIMING_STATISTICS:
            raise ValueError(f"unknown timing statistic {statistic!r}; choose one of: {', '.join(TIMING_STATISTICS)}")
        device, low = _device_and_low(pruner, device, low)
        if engine == "onnxruntime" and device.type != "cpu":
            raise ValueError("the onnxruntime engine times on the CPU; use engine='torch' on another device")
        layers, units = pruner.layers, pruner.units
        grids = [grid_widths(int(lo), int(u), points, round_to) for lo, u in zip(low, units, strict=True)]
        example = pruner.example.repeat(batch_size, *([1] * (pruner.example.dim() - 1)))
        # block i runs modules bounds[i]..bounds[i+1]-1 (block 0 from the input); the tail last
        bounds = [0, *(layer.position for layer in layers[1:]), layers[-1].consumer, len(pruner.model)]
        jobs = [(i, a, b) for i in range(len(layers)) for a in (grids[i - 1] if i > 0 else [0]) for b in grids[i]]
        jobs += [(len(layers), a, 0) for a in grids[-1]]
        # blocks timed alone miss what runs between them (and a noisy cell lifts its wider
        # neighbours): the whole network is also timed at the grid's smallest and full widths,
        # and the entries are mapped linearly onto those two timings (below)
        # ... and at random allocations between them, which set a monotone curve from the
        # summed blocks to the whole network (blocks timed alone under-predict mid-sized
        # networks, by up to 14% for VGG16 at batch 1: BENCHMARKS.md)
        rng = np.random.default_rng(CALIBRATION_SEED)
        anchors = [np.array([int(g[0]) for g in grids]), units.copy(),
                   *(np.array([as_searched(rng.integers(int(g[0]), int(u) + 1), int(g[0]), int(u), round_to)
                               for g, u in zip(grids, units, strict=True)]) for _ in range(CALIBRATION_ALLOCATIONS))]
        inputs: dict[tuple[int, int], torch.Tensor] = {}  # block i's input when layer i-1 keeps a
        calls = []
        with tempfile.TemporaryDirectory() as folder:
            for j, (i, a, b) in enumerate(tqdm(jobs, desc="latency table: blocks", disable=not show_progress)):
                counts = units.copy()
                if i > 0:
                    counts[i - 1] = a
                if i < len(layers):
                    counts[i] = b
                model = pruner.prune_indices([torch.arange(int(c)) for c in counts]).eval()
                if (i, a) not in inputs:
                    with torch.no_grad():
                        inputs[i, a] = model[: bounds[i]](example) if bounds[i] > 0 else example
                calls.append(_timeable(engine, model[bounds[i]: bounds[i + 1]], inputs[i, a], device,
                                       Path(folder), f"block{j}"))
            for k, counts in enumerate(anchors):
                calls.append(_timeable(engine, pruner.prune_indices([torch.arange(int(c)) for c in counts]),
                                       example, device, Path(folder), f"network{k}"))
            # every cell and calibration network once per pass, in a random order: a slow spell
            # of the machine then lifts a pass of every cell alike, not some cells
            times = over_rounds(time_alternating(calls, repeats * rounds, seed=CALIBRATION_SEED,
                                                 desc="latency table: timing" if show_progress else None), statistic)
        cells, anchor_ms = times[: len(jobs)], times[len(jobs):]
        blocks = [np.zeros((len(grids[i - 1]) if i > 0 else 1, len(grids[i]))) for i in range(len(layers))]
        tail = np.zeros(len(grids[-1]))
        for (i, a, b), ms in zip(jobs, cells, strict=True):
            if i < len(layers):
                blocks[i][(list(grids[i - 1]).index(a) if i > 0 else 0), list(grids[i]).index(b)] = ms
            else:
                tail[list(grids[-1]).index(a)] = ms
        settings = {"batch_size": batch_size, "engine": engine, "device": str(device),
                    "threads": torch.get_num_threads(), "points": points, "repeats": repeats, "statistic": statistic,
                    "rounds": rounds, "passes": repeats * rounds, "timing": "alternating", "round_to": round_to,
                    "anchor_counts": [[int(c) for c in a] for a in anchors]}
        # timing noise must not make a wider layer look faster: the clamp bisects on a cost
        # that rises with every count, so each block's times are made non-decreasing
        blocks = [np.maximum.accumulate(np.maximum.accumulate(b, axis=0), axis=1) for b in blocks]
        table = cls(grids, blocks, np.maximum.accumulate(tail), settings)
        measured = [float(ms) for ms in anchor_ms]
        predicted = [table.predict(counts) for counts in anchors]
        if predicted[1] > predicted[0] and measured[1] > measured[0]:
            scale = (measured[1] - measured[0]) / (predicted[1] - predicted[0])
            shift = measured[1] - scale * predicted[1]
            # the linear map scales every block and shifts the tail: it maps each summed prediction the same way
            curve = _calibration_curve([scale * p + shift for p in predicted], measured)
            settings["calibration"] = {"scale": scale, "shift_ms": shift, "anchors_ms": measured[:2], "curve": curve}
            table = cls(grids, [b * scale for b in table.blocks], table.tail * scale + shift, settings)
        return table

    @classmethod
    def build(cls, pruner: BasePruner, name: str, batch_size: int = 1, engine: str = "torch",
              device: torch.device | str | None = None, points: int = 6, low: Sequence[int] | None = None,
              show_progress: bool = True, cache: bool = True, statistic: str = "median",
              rounds: int = 1, round_to: int | None = None, threads: int | None = None) -> LatencyTable:
        """The cached table of ``name``'s network for these settings, measured when none is;
        ``threads``: torch's thread count for the table (default: the count in force)."""
        with torch_threads(threads):
            return cls._build(pruner, name, batch_size, engine, device, points, low, show_progress, cache, statistic,
                              rounds, round_to)

    @classmethod
    def _build(cls, pruner: BasePruner, name: str, batch_size: int, engine: str, device, points: int,
               low: Sequence[int] | None, show_progress: bool, cache: bool, statistic: str, rounds: int,
               round_to: int | None) -> LatencyTable:
        device, low = _device_and_low(pruner, device, low)
        architecture = f"{pruner.model}|{tuple(pruner.example.shape)}|{pruner.example.dtype}"
        key = {"target": name, "architecture": hashlib.sha1(architecture.encode()).hexdigest()[:16],
               "units": [int(u) for u in pruner.units], "low": [int(x) for x in low],
               "batch_size": batch_size, "engine": engine, "device": str(device),
               "threads": torch.get_num_threads(), "points": points, "statistic": statistic,
               "calibration": ["linear", "random", CALIBRATION_ALLOCATIONS, CALIBRATION_SEED, CURVE_KNOTS],
               "widths": ["as searched", ALIGNMENT, "both sides of steps", CHANNEL_BLOCK, BRACKETED_STEPS], "timing": "alternating", "round_to": round_to, **({"rounds": rounds} if rounds > 1 else {})}
        path = cache_path(key)
        if cache and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return cls.from_dict(saved)
        table = cls.measure(pruner, batch_size, engine, device, points, low, show_progress=show_progress,
                            statistic=statistic, rounds=rounds, round_to=round_to)
        if cache:  # a unique temporary file: processes building the same table never collide
            atomic_write_bytes(path, json.dumps({"key": key, **table.to_dict()}).encode())
        return table

    def to_dict(self) -> dict:
        return {"grids": [g.tolist() for g in self.grids], "blocks": [b.tolist() for b in self.blocks],
                "tail": self.tail.tolist(), "settings": self.settings}

    @classmethod
    def from_dict(cls, saved: dict) -> LatencyTable:
        return cls([np.array(g, dtype=np.int64) for g in saved["grids"]], [np.array(b) for b in saved["blocks"]],
                   np.array(saved["tail"]), saved["settings"])


def _calibration_curve(predicted: list[float], measured: list[float]) -> dict | None:
    """A monotone piecewise-linear map from summed blocks to whole-network ms: through the
    first two anchors (the smallest and full widths, already exact after the linear
    calibration), and through the medians of the others in :data:`CURVE_KNOTS` groups
    ordered by prediction (a knot per group, so that one noisy timing does not bend the
    curve); None when the knots do not rise with the prediction."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    inner = np.argsort(predicted[2:]) + 2
    if len(inner) == 0:
        return None
    groups = np.array_split(inner, min(CURVE_KNOTS, len(inner)))
    low, high = predicted[:2].min(), predicted[:2].max()  # the two ends stay where they are
    xs = np.array([low, *(np.median(predicted[g]) for g in groups), high])
    ys = np.array([low, *(np.median(measured[g]) for g in groups), high])
    if np.any(np.diff(xs) <= 0):
        return None
    ys = np.clip(np.maximum.accumulate(ys), xs[0], xs[-1])  # a slow timing never makes a wider network faster
    return {"predicted_ms": xs.tolist(), "measured_ms": ys.tolist()}


def _device_and_low(pruner: BasePruner, device, low) -> tuple[torch.device, list[int]]:
    """Where to time (default: where the model is) and each layer's smallest grid width (default 1)."""
    device = torch.device(device) if device is not None else module_device(pruner.model)
    return device, list(low) if low is not None else [1] * len(pruner.layers)


def cache_path(key: dict) -> Path:
    """Where the table of ``key`` (target, architecture and every timing setting) is cached."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return home_dir() / "latency" / f"{key['target']}-{key['engine']}-b{key['batch_size']}-t{key['threads']}-{digest}.json"
