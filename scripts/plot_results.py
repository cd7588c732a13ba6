"""Aggregate runs of train_with_pruning.py into comparison plots and a table.

    python scripts/plot_results.py --root results --task supervised|rl

Reads every <root>/<task>/<dataset or env>/<model>/<run>/results.json and, for each dataset
(or environment) and model, plots the final metric against the pruning rate, one series
per method (mean and standard deviation over runs of the same method). Writes
<root>/<task>/<dataset>_<model>_comparison.png and prints the table, also saved as CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.train_with_pruning import compare_runs, load_runs
from prune_env.cli import UsageError, make_parser, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--root", default="results", help="the --root folder of train_with_pruning.py")
    parser.add_argument("--task", required=True, choices=["supervised", "rl"], help="which runs to compare")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    root = Path(args.root)
    runs = load_runs(root, args.task)
    if runs.empty:
        raise UsageError(f"no results.json under {root / args.task}; run scripts/train_with_pruning.py first")
    table = compare_runs(runs, root, args.task)
    print(table.to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    run_main(main)
