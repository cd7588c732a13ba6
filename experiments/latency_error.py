"""How well does the per-layer latency table predict end-to-end latency?

:func:`table_errors` draws random allocations, predicts each one's latency with the
target's table and times the pruned network end to end, interleaved over rounds so that
drift of the machine hits every network alike. ``scripts/bench_latency.py --table N``
prints the summary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from prune_env.cost import forward_call, onnx_call, over_rounds, time_alternating
from prune_env.env import allowed_counts
from prune_env.export import export_onnx
from prune_env.latency import LatencyTable, as_searched
from prune_env.pruner import make_pruner
from prune_env.surgery import keep_count

PASSES_PER_ROUND = 20
"""Alternating passes per timing round of the end-to-end check (a round held 20 runs of each network before)."""


def table_errors(target, model, batches: list[int], n: int, engine: str, seed: int = 0,
                 rounds: int = 1, statistic: str = "median", table_rounds: int = 1,
                 round_to: int | None = None) -> list[dict]:
    """Prediction error of the latency table on ``n`` random allocations (each layer's keep
    ratio uniform in [0.1, 1]) per batch size, measured end to end with ``engine``: the
    ``statistic`` the table was timed with (``median``, or ``min``: the fastest run) of
    ``rounds`` x :data:`PASSES_PER_ROUND` single runs of each network, alternating (every
    network once per pass, in a random order: :func:`prune_env.cost.time_alternating`). Two
    errors per allocation: of the predicted milliseconds (``error``), and of the predicted
    fraction of the unpruned network's latency against the measured fraction
    (``ratio_error``: the budget clamp works on that fraction, and it does not depend on how
    fast this process runs the unpruned network). ``spread`` is the timer's own: max over
    min of an allocation's rounds (each the statistic of its passes), minus 1.
    ``table_rounds``: the table's own timing rounds (see :meth:`LatencyTable.measure`).
    ``round_to``: every count is moved to the nearest multiple of it that the env allows, and
    the table is the one an env with that rounding builds."""
    pruner = make_pruner(model, target.example_input())
    low = [int(allowed_counts(int(u), keep_count(0.1, int(u)), round_to)[0]) for u in pruner.units]
    rng = np.random.default_rng(seed)
    allocations = [[keep_count(rng.uniform(0.1, 1.0), int(u)) for u in pruner.units] for _ in range(n)]
    if round_to:
        allocations = [[as_searched(c, lo, int(u), round_to) for c, lo, u in zip(a, low, pruner.units, strict=True)]
                       for a in allocations]
    allocations = [[int(u) for u in pruner.units], *allocations]
    pruned = [pruner.prune_indices([torch.arange(c) for c in counts]) for counts in allocations]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"m{i}.onnx" for i in range(len(pruned))] if engine == "onnxruntime" else []
        for m, path in zip(pruned, paths, strict=False):
            export_onnx(m, target.example_input(2), path)
        for batch in batches:
            table = LatencyTable.build(pruner, target.name, batch, engine, target.device, low=low,
                                       statistic=statistic, rounds=table_rounds, round_to=round_to)
            x = target.example_input(batch)
            calls = ([onnx_call(path, x) for path in paths] if paths
                     else [forward_call(m.to(target.device), x, target.device) for m in pruned])
            times = time_alternating(calls, PASSES_PER_ROUND * rounds, seed=seed, desc=f"timing at batch {batch}")
            times = times.reshape(rounds, PASSES_PER_ROUND, -1)
            rows += [{**r, "seed": seed} for r in _error_rows(target.name, engine, batch, allocations, table, times,
                                                              statistic)]
    return rows


def _error_rows(target_name: str, engine: str, batch: int, allocations: list[list[int]], table: LatencyTable,
                times: np.ndarray, statistic: str = "median") -> list[dict]:
    """One row per allocation (the unpruned network first) from its alternating single runs,
    shaped (rounds, passes per round, allocations)."""
    measured = over_rounds(times.reshape(-1, times.shape[-1]), statistic)
    per_round = np.stack([over_rounds(r, statistic) for r in times])
    predicted = np.array([table.predict(counts) for counts in allocations])
    rows = []
    for i, counts in enumerate(allocations):
        ratio_error = (predicted[i] / predicted[0]) / (measured[i] / measured[0]) - 1
        rows.append({"target": target_name, "engine": engine, "batch": batch, "allocation": i,
                     "keep_counts": counts, "predicted_ms": float(predicted[i]), "measured_ms": float(measured[i]),
                     "error": round(float(predicted[i] / measured[i] - 1), 4),
                     "ratio_error": round(float(ratio_error), 4),
                     "spread": round(float(per_round[:, i].max() / per_round[:, i].min() - 1), 4),
                     "rounds": len(times), "statistic": statistic, "round_to": table.settings.get("round_to"),
                     "table_rounds": int(table.settings.get("rounds", 1)), "threads": torch.get_num_threads()})
    return rows


def print_table_errors(rows: list[dict]) -> None:
    """One line per batch size: the errors of the 20 (or N) random allocations."""
    engine = rows[0]["engine"]
    for batch in dict.fromkeys(r["batch"] for r in rows):
        at = [r for r in rows if r["batch"] == batch and r["allocation"] > 0]
        base = next(r for r in rows if r["batch"] == batch and r["allocation"] == 0)
        errors = np.abs([r["error"] for r in at])
        ratio_errors = np.abs([r["ratio_error"] for r in at])
        spread = np.median([r["spread"] for r in at])
        print(f"{rows[0]['target']} {engine} batch {batch}: ms error median {np.median(errors):.1%}, "
              f"max {errors.max():.1%}, within 10%: {(errors <= 0.10).sum()}/{len(errors)}; "
              f"fraction-of-unpruned error median {np.median(ratio_errors):.1%}, max {ratio_errors.max():.1%}, "
              f"within 10%: {(ratio_errors <= 0.10).sum()}/{len(ratio_errors)}; unpruned predicted "
              f"{base['predicted_ms']:.3g} ms, measured {base['measured_ms']:.3g} ms; timer spread over "
              f"{base['rounds']} rounds median {spread:.1%} ({base['threads']} threads, the "
              f"{base['statistic']} run; table timed in {base['table_rounds']} round(s))")
