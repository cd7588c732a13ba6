"""Prune a pretrained target step by step and measure it after each step (``scripts/sweep.py``).

Methods: ``l1`` and ``ngf`` remove a fraction of all units (structured, one global
threshold on per-layer-normalised L1 norms or mean activations, re-measured on the current
network at every step); ``magnitude`` zeroes a fraction of all weights (unstructured).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from prune_env.cost import count_flops, count_nonzero_params, count_params
from prune_env.during_training import global_magnitude_masks, weight_modules
from prune_env.files import write_json
from prune_env.rounds import RoundPruner
from target_models import Target

CRITERION = {"l1": "l1", "ngf": "activation"}
METHODS = ("magnitude", "ngf", "l1")


def magnitude_step(model: nn.Module, fraction: float) -> nn.Module:
    pruned = copy.deepcopy(model)
    weights = weight_modules(pruned)
    with torch.no_grad():
        for m, mask in zip(weights, global_magnitude_masks(weights, fraction), strict=True):
            m.weight.mul_(mask)
    return pruned


def sweep(target: Target, method: str, fractions: list[float], out: Path, finetune_epochs: float = 0.0,
          tolerance: float = 0.01, max_drop: float | None = None) -> dict:
    """Prune ``target``'s pretrained network to each of ``fractions`` in turn (each step
    starts from the previous one), measuring on the test split; writes ``out/sweep.csv``,
    ``out/sweep.json`` and ``out/sweep.png`` and returns the summary (``sweep.json``).

    A step is within tolerance when its metric is at least the unpruned one less
    ``max_drop`` (absolute: 0.01 is one point of accuracy) when given, else at least the
    unpruned one times ``1 - tolerance``."""
    base = target.load_pretrained()
    evaluate = target.evaluator("test")
    example = target.example_input()
    rounds = None if method == "magnitude" else RoundPruner(
        base, example, [1 - f for f in fractions], target.calibration_inputs(512), CRITERION[method], resource="units",
        keep_layers=target.keep_layers)
    base_metric = evaluate(base)
    rows = [{"fraction": 0.0, "metric": base_metric, "params": count_nonzero_params(base), "flops": count_flops(base, example)}]
    model = base
    for f in fractions:
        model = magnitude_step(model, f) if rounds is None else rounds.step()
        if finetune_epochs > 0:
            target.finetune(model, epochs=finetune_epochs)
            if method == "magnitude":
                model = magnitude_step(model, f)  # fine-tuning must not regrow pruned weights
        metric = evaluate(model)
        rows.append({"fraction": f, "metric": metric, "params": count_nonzero_params(model),
                     "flops": count_flops(model, example) if method != "magnitude" else rows[0]["flops"],
                     "dense_params": count_params(model)})
        print(f"{method} {f:.2f}: {target.metric_name} {metric:.4f}, non-zero params {rows[-1]['params']:,}")
    table = pd.DataFrame(rows)
    floor = base_metric - max_drop if max_drop is not None else base_metric * (1 - tolerance)
    table["within_tolerance"] = table["metric"] >= floor
    ok = table[table["within_tolerance"]]
    largest = float(ok["fraction"].max()) if len(ok) else 0.0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    summary = {"target": target.name, "method": method, "metric_name": target.metric_name,
               "metric_base": base_metric, "tolerance": None if max_drop is not None else tolerance,
               "max_drop": max_drop, "metric_floor": floor, "largest_fraction_within_tolerance": largest,
               "finetune_epochs": finetune_epochs}
    write_json(out / "sweep.json", summary)
    plot_sweep(table, summary, out / "sweep.png")
    return summary


def plot_sweep(table: pd.DataFrame, summary: dict, path: Path) -> None:
    """The metric against the fraction pruned, with the tolerance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["fraction"], table["metric"], marker="o", label=summary["method"])
    ax.axhline(summary["metric_floor"], color="grey", linestyle=":", label="tolerance")
    ax.set(xlabel="fraction pruned (units, or weights for magnitude)", ylabel=f"{summary['metric_name']} (test)",
           title=f"{summary['target']}: {summary['method']} sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
