"""Prune a pretrained target step by step and measure it after each step.

    python scripts/sweep.py --target cnn_cifar10 --method ngf --fractions 0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 \\
        [--finetune-epochs 0.2] [--tolerance 0.01 | --max-drop 0.01] --out results/sweeps/cnn-ngf
    python scripts/sweep.py --target resnet56_cifar10 --method magnitude --finetune-epochs 0.2 --max-drop 0.01 \\
        --out results/sweeps/resnet56-magnitude

Methods: ``l1`` and ``ngf`` remove that fraction of all units (structured, one global
threshold on per-layer-normalised L1 norms or mean activations, re-measured on the current
network at every step); ``magnitude`` zeroes that fraction of all weights (unstructured).
Writes OUT/sweep.csv and OUT/sweep.png and reports the largest fraction whose metric stays
within --tolerance (relative) or --max-drop (absolute) of the unpruned one, measured on the
test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.sweep import METHODS, sweep
from prune_env.cli import (
    UsageError,
    add_target_arguments,
    check_at_least,
    check_out_folder,
    make_parser,
    parse_fractions,
    run_main,
    target_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--method", required=True, choices=list(METHODS), help="how units (or weights) are chosen")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                        help="fractions to remove, each in (0, 1), separated by commas")
    parser.add_argument("--finetune-epochs", type=float, default=0.0, help="fine-tuning after each step")
    drop = parser.add_mutually_exclusive_group()
    drop.add_argument("--tolerance", type=float, default=0.01, help="relative drop of the metric allowed")
    drop.add_argument("--max-drop", type=float, default=None,
                      help="absolute drop of the metric allowed instead (0.01: one point of accuracy)")
    parser.add_argument("--out", required=True, help="folder for sweep.csv, sweep.json and sweep.png")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    fractions = sorted(parse_fractions(args.fractions, "--fractions", upper_open=True))
    check_at_least("--finetune-epochs", args.finetune_epochs, 0)
    if not 0 <= args.tolerance < 1:
        raise UsageError(f"--tolerance must lie in [0, 1), got {args.tolerance}")
    if args.max_drop is not None and args.max_drop < 0:
        raise UsageError(f"--max-drop must be at least 0, got {args.max_drop}")
    check_out_folder(args.out, results=())
    target = target_from_args(args)
    summary = sweep(target, args.method, fractions, Path(args.out), args.finetune_epochs, args.tolerance,
                    args.max_drop)
    largest = summary["largest_fraction_within_tolerance"]
    allowed = f"{args.max_drop:g} (absolute)" if args.max_drop is not None else f"{args.tolerance:.0%}"
    print(f"largest fraction within {allowed} of the unpruned {target.metric_name}: {largest:.2f}")


if __name__ == "__main__":
    run_main(main)
