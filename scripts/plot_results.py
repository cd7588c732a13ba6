"""Aggregate runs of train_with_pruning.py into comparison plots and a table.

    python scripts/plot_results.py --root results --task supervised|rl

Reads every <root>/<task>/<dataset or env>/<model>/<run>/results.json and, for each dataset
(or environment) and model, plots the final metric against the pruning rate, one series
per method (mean and standard deviation over runs of the same method). Writes
<root>/<task>/<dataset>_<model>_comparison.png and prints the table, also saved as CSV.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from prune_env.cli import UsageError, run_main


def load_runs(root: Path, task: str) -> pd.DataFrame:
    rows = []
    for path in sorted((root / task).glob("*/*/*/results.json")):
        r = json.loads(path.read_text())
        metric = r["test_accuracy"] if task == "supervised" else r["mean_return_last_100"]
        rows.append({"group": path.parts[-4], "model": path.parts[-3], "run": path.parts[-2], "method": r["method"],
                     "metric": metric, "pruning_rate": r["pruning_rate"], "params_after": r["params_after"],
                     "seconds": r["training_seconds"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="results")
    parser.add_argument("--task", required=True, choices=["supervised", "rl"])
    args = parser.parse_args()
    root = Path(args.root)
    runs = load_runs(root, args.task)
    if runs.empty:
        raise UsageError(f"no results.json under {root / args.task}; run scripts/train_with_pruning.py first")
    metric_name = "test accuracy" if args.task == "supervised" else "mean return (last 100 episodes)"
    table = runs.groupby(["group", "model", "method"], sort=False).agg(
        runs=("run", "count"), metric_mean=("metric", "mean"), metric_std=("metric", "std"),
        pruning_rate=("pruning_rate", "mean"), params_after=("params_after", "mean"), seconds=("seconds", "mean"),
    ).reset_index().fillna({"metric_std": 0.0})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for (group, model), rows in table.groupby(["group", "model"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 4))
        for _, row in rows.iterrows():
            ax.errorbar(row["pruning_rate"], row["metric_mean"], yerr=row["metric_std"], marker="o", capsize=3,
                        linestyle="none", label=f"{row['method']} ({row['runs']} runs)")
        ax.set(xlabel="pruning rate (share of parameters removed)", ylabel=metric_name, title=f"{group} / {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = root / args.task / f"{group}_{model}_comparison.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    table.to_csv(root / args.task / "comparison.csv", index=False)
    print(table.to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    run_main(main)
