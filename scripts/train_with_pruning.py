"""Train a network while pruning it: supervised classifiers or REINFORCE on CartPole.

    python scripts/train_with_pruning.py --task supervised --dataset fashion_mnist --model lenet5 \\
        --pruning-method ngf --critical-start 0 --critical-duration 2 --keep-fraction 0.5
    python scripts/train_with_pruning.py --task rl --pruning-method ngf --keep-fraction 0.7 \\
        --critical-start 100 --critical-duration 100

Methods: none, ngf (critical period, then keep the most active --keep-fraction of the units),
ngf_scheduled (polynomial decay of the keep fraction between --pruning-start and
--pruning-end every --pruning-frequency), magnitude (global unstructured L1 of
--prune-fraction of the weights at --pruning-apply). Periods are epochs (supervised) or
episodes (rl). Writes results/<task>/<dataset or env>/<model>/<run name>/.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from prune_env.cli import UsageError, run_main
from prune_env.during_training import (
    MagnitudePruner,
    NGFPruner,
    ScheduledNGFPruner,
    TrainingPruner,
)
from prune_env.train_with_pruning import (
    DATASETS,
    MODELS,
    RLConfig,
    SupervisedConfig,
    save_run,
    train_rl,
    train_supervised,
)


def make_pruner(args: argparse.Namespace) -> TrainingPruner:
    if args.pruning_method == "none":
        return TrainingPruner()
    if args.pruning_method == "ngf":
        return NGFPruner(args.critical_start, args.critical_duration, args.keep_fraction)
    if args.pruning_method == "ngf_scheduled":
        return ScheduledNGFPruner(args.pruning_start, args.pruning_end, args.pruning_frequency,
                                  args.initial_keep_fraction, args.final_keep_fraction, args.schedule_power)
    return MagnitudePruner(args.prune_fraction, args.pruning_apply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["supervised", "rl"])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    parser.add_argument("--model", default="lenet5", choices=MODELS)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pruning-method", default="none", choices=["none", "ngf", "ngf_scheduled", "magnitude"])
    parser.add_argument("--critical-start", type=int, default=0)
    parser.add_argument("--critical-duration", type=int, default=1)
    parser.add_argument("--keep-fraction", type=float, default=0.7)
    parser.add_argument("--pruning-start", type=int, default=0)
    parser.add_argument("--pruning-end", type=int, default=5)
    parser.add_argument("--pruning-frequency", type=int, default=1)
    parser.add_argument("--initial-keep-fraction", type=float, default=1.0)
    parser.add_argument("--final-keep-fraction", type=float, default=0.5)
    parser.add_argument("--schedule-power", type=float, default=3.0)
    parser.add_argument("--prune-fraction", type=float, default=0.5)
    parser.add_argument("--pruning-apply", type=int, default=0)
    parser.add_argument("--video-every", type=int, default=None, help="rl: a GIF of a greedy episode every N episodes")
    parser.add_argument("--root", default="results")
    parser.add_argument("--name", default=None, help="run name (default: method, seed and time)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        pruner = make_pruner(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    name = args.name or f"{args.pruning_method}-s{args.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    if args.task == "supervised":
        cfg = SupervisedConfig(args.dataset, args.model, args.epochs, patience=args.patience, seed=args.seed,
                               limit=args.limit, data_dir=args.data_dir)
        out = Path(args.root) / "supervised" / args.dataset / args.model / name
        results, model = train_supervised(cfg, pruner, show_progress=not args.quiet)
        summary = f"test accuracy {results['test_accuracy']:.4f}"
    else:
        cfg = RLConfig(args.env, args.episodes, seed=args.seed, video_every=args.video_every)
        out = Path(args.root) / "rl" / args.env / "policy_mlp" / name
        results, model = train_rl(cfg, pruner, out, show_progress=not args.quiet)
        summary = (f"mean return (last 100) {results['mean_return_last_100']:.1f}, "
                   f"greedy test {results['greedy_test_mean_return']}")
    config = {k: v for k, v in vars(args).items() if k not in ("quiet",)}
    save_run(out, config, results, model, pruner.example)
    print(f"{args.pruning_method}: {summary}; params {results['params_before']:,} -> {results['params_after']:,} "
          f"(pruning rate {results['pruning_rate']:.1%}), {results['training_seconds']:.0f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
