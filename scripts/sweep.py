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

Several methods (--method l1,ngf,magnitude) are several runs, each in OUT/<method>/; with
--ray (a local Ray cluster) or --ray-address ADDR (an existing one) they run as Ray tasks of
--threads CPUs each, and --resume skips the methods that finished (OUT/<method>/sweep.json).
"""

from __future__ import annotations

import argparse
import json

from agents.parallel import RunTasks, add_parallel_arguments, parallelism_from_args
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
    parser.add_argument("--method", required=True,
                        help=f"how units (or weights) are chosen, one of {','.join(METHODS)}, or several separated "
                             "by commas")
    parser.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                        help="fractions to remove, each in (0, 1), separated by commas")
    parser.add_argument("--finetune-epochs", type=float, default=0.0, help="fine-tuning after each step")
    drop = parser.add_mutually_exclusive_group()
    drop.add_argument("--tolerance", type=float, default=0.01, help="relative drop of the metric allowed")
    drop.add_argument("--max-drop", type=float, default=None,
                      help="absolute drop of the metric allowed instead (0.01: one point of accuracy)")
    parser.add_argument("--out", required=True, help="folder for sweep.csv, sweep.json and sweep.png")
    parser.add_argument("--resume", action="store_true", help="skip the methods whose sweep finished in --out")
    add_parallel_arguments(parser, workers=False, what="one Ray task per method")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    fractions = sorted(parse_fractions(args.fractions, "--fractions", upper_open=True))
    check_at_least("--finetune-epochs", args.finetune_epochs, 0)
    if not 0 <= args.tolerance < 1:
        raise UsageError(f"--tolerance must lie in [0, 1), got {args.tolerance}")
    if args.max_drop is not None and args.max_drop < 0:
        raise UsageError(f"--max-drop must be at least 0, got {args.max_drop}")
    methods = [m for m in args.method.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown --method {','.join(unknown) or args.method!r}; choose from {', '.join(METHODS)}")
    out = check_out_folder(args.out, results=())
    folders = {m: out if len(methods) == 1 else out / m for m in methods}
    todo = [m for m in methods if not (args.resume and (folders[m] / "sweep.json").is_file())]
    for m in set(methods) - set(todo):
        print(f"{m}: finished in {folders[m]}, skipped (--resume)")
    target = target_from_args(args)
    target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
    tasks = RunTasks(parallelism_from_args(args))
    handles = [tasks.submit(sweep, target, m, fractions, folders[m], args.finetune_epochs, args.tolerance,
                            args.max_drop) for m in todo]
    tasks.gather(handles)
    allowed = f"{args.max_drop:g} (absolute)" if args.max_drop is not None else f"{args.tolerance:.0%}"
    for m in methods:
        summary = json.loads((folders[m] / "sweep.json").read_text())
        print(f"{m}: largest fraction within {allowed} of the unpruned {target.metric_name}: "
              f"{summary['largest_fraction_within_tolerance']:.2f}")


if __name__ == "__main__":
    run_main(main)
