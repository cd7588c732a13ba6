"""Prune a pretrained target step by step and measure it after each step.

    python scripts/sweep.py --target cnn_cifar10 --method ngf --fractions 0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 \\
        [--finetune-epochs 0.2] [--tolerance 0.01] --out results/sweeps/cnn-ngf

Methods: ``l1`` and ``ngf`` remove that fraction of all units (structured, one global
threshold on per-layer-normalised L1 norms or mean activations, re-measured on the current
network at every step); ``magnitude`` zeroes that fraction of all weights (unstructured).
Writes OUT/sweep.csv and OUT/sweep.png and reports the largest fraction whose metric stays
within --tolerance (relative) of the unpruned one, measured on the test split.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from prune_env.cli import UsageError, add_target_arguments, run_main, target_from_args
from prune_env.cost import count_flops, count_nonzero_params, count_params
from prune_env.during_training import global_magnitude_masks, weight_modules
from prune_env.importance import global_threshold_counts
from prune_env.pruner import Pruner

CRITERION = {"l1": "l1", "ngf": "activation"}


def structured_step(model: nn.Sequential, pruner_inputs: tuple, units_total: int, fraction: float, method: str):
    """Remove units until ``fraction`` of the original ``units_total`` are gone."""
    pruner = Pruner(model, *pruner_inputs)
    scores = pruner.stats.l1 if method == "l1" else pruner.stats.activation
    keep_share = (1 - fraction) * units_total / pruner.units.sum()
    counts = np.minimum(global_threshold_counts(scores)(min(1.0, keep_share)), pruner.units)
    return pruner.prune_counts(counts, CRITERION[method])


def magnitude_step(model: nn.Module, fraction: float) -> nn.Module:
    pruned = copy.deepcopy(model)
    weights = weight_modules(pruned)
    with torch.no_grad():
        for m, mask in zip(weights, global_magnitude_masks(weights, fraction), strict=True):
            m.weight.mul_(mask)
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--method", required=True, choices=["magnitude", "ngf", "l1"])
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--finetune-epochs", type=float, default=0.0)
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative drop of the metric allowed")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fractions = sorted(float(f) for f in args.fractions.split(",") if f)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise UsageError("--fractions must lie in (0, 1)")
    target = target_from_args(args)
    base = target.load_pretrained()
    evaluate = target.evaluator("test")
    example = target.example_input()
    inputs = (example, target.calibration_inputs(512))
    units_total = int(Pruner(base, example).units.sum())
    base_metric = evaluate(base)
    rows = [{"fraction": 0.0, "metric": base_metric, "params": count_nonzero_params(base), "flops": count_flops(base, example)}]
    model = base
    for f in fractions:
        model = magnitude_step(model, f) if args.method == "magnitude" else structured_step(model, inputs, units_total, f, args.method)
        if args.finetune_epochs > 0:
            target.finetune(model, epochs=args.finetune_epochs)
            if args.method == "magnitude":
                model = magnitude_step(model, f)  # fine-tuning must not regrow pruned weights
        metric = evaluate(model)
        rows.append({"fraction": f, "metric": metric, "params": count_nonzero_params(model),
                     "flops": count_flops(model, example) if args.method != "magnitude" else rows[0]["flops"],
                     "dense_params": count_params(model)})
        print(f"{args.method} {f:.2f}: {target.metric_name} {metric:.4f}, non-zero params {rows[-1]['params']:,}")
    table = pd.DataFrame(rows)
    table["within_tolerance"] = table["metric"] >= base_metric * (1 - args.tolerance)
    ok = table[table["within_tolerance"]]
    largest = float(ok["fraction"].max()) if len(ok) else 0.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    summary = {"target": target.name, "method": args.method, "metric_name": target.metric_name,
               "metric_base": base_metric, "tolerance": args.tolerance, "largest_fraction_within_tolerance": largest,
               "finetune_epochs": args.finetune_epochs}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(table, summary, out / "sweep.png")
    print(f"largest fraction within {args.tolerance:.0%} of the unpruned {target.metric_name}: {largest:.2f}")


def plot(table: pd.DataFrame, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["fraction"], table["metric"], marker="o", label=summary["method"])
    ax.axhline(summary["metric_base"] * (1 - summary["tolerance"]), color="grey", linestyle=":", label="tolerance")
    ax.set(xlabel="fraction pruned (units, or weights for magnitude)", ylabel=f"{summary['metric_name']} (test)",
           title=f"{summary['target']}: {summary['method']} sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
