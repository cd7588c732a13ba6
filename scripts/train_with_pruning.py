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
import inspect
from datetime import datetime
from pathlib import Path

from experiments.train_with_pruning import (
    DATASETS,
    MODELS,
    RLConfig,
    SupervisedConfig,
    save_run,
    train_rl,
    train_supervised,
)
from prune_env.cli import (
    UsageError,
    add_device_argument,
    check_at_least,
    check_fraction,
    check_out_folder,
    make_parser,
    positive_int,
    run_main,
)
from prune_env.during_training import PRUNERS, TrainingPruner

FLAG_OF = {"frequency": "pruning_frequency", "initial_keep": "initial_keep_fraction",
           "final_keep": "final_keep_fraction", "power": "schedule_power", "apply_at": "pruning_apply"}
"""Constructor keyword of a pruner in ``PRUNERS`` -> its flag's name, where they differ."""


def pruner_flags(cls: type[TrainingPruner]) -> dict[str, str]:
    """Constructor keyword -> the attribute of the parsed flags that sets it."""
    return {p: FLAG_OF.get(p, p) for p in inspect.signature(cls.__init__).parameters if p != "self"}


def make_pruner(args: argparse.Namespace) -> TrainingPruner:
    """The pruner of ``--pruning-method``, built from the flags named after its keywords."""
    cls = PRUNERS[args.pruning_method]
    return cls(**{keyword: getattr(args, flag) for keyword, flag in pruner_flags(cls).items()})


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--task", required=True, choices=["supervised", "rl"],
                        help="a supervised classifier, or REINFORCE on a Gymnasium environment")
    parser.add_argument("--dataset", default="fashion_mnist", choices=list(DATASETS), help="supervised: the data")
    parser.add_argument("--model", default="lenet5", choices=list(MODELS), help="supervised: the classifier")
    parser.add_argument("--env", default="CartPole-v1", help="rl: a Gymnasium environment id with discrete actions")
    parser.add_argument("--epochs", type=int, default=20, help="supervised: most epochs to train")
    parser.add_argument("--episodes", type=int, default=1000, help="rl: episodes to train")
    parser.add_argument("--patience", type=int, default=3,
                        help="supervised: stop when validation accuracy has not improved for this many epochs "
                             "after the last pruning")
    parser.add_argument("--seed", type=int, default=0, help="seeds the network, the data order and the episodes")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="supervised: use only the first N rows of each split (default: every row)")
    parser.add_argument("--data-dir", default=None,
                        help="local data in the hub's parquet layout (default: $PRUNE_ENV_DATA_DIR, else the hub)")
    add_device_argument(parser)
    parser.add_argument("--pruning-method", default="none", choices=list(PRUNERS), help="how the network is pruned")
    parser.add_argument("--critical-start", type=int, default=0, help="ngf: first period of the critical period")
    parser.add_argument("--critical-duration", type=int, default=1, help="ngf: periods in the critical period")
    parser.add_argument("--keep-fraction", type=float, default=0.7, help="ngf: fraction of the units to keep")
    parser.add_argument("--pruning-start", type=int, default=0, help="ngf_scheduled: first pruning period")
    parser.add_argument("--pruning-end", type=int, default=5, help="ngf_scheduled: last pruning period")
    parser.add_argument("--pruning-frequency", type=int, default=1, help="ngf_scheduled: periods between prunings")
    parser.add_argument("--initial-keep-fraction", type=float, default=1.0,
                        help="ngf_scheduled: keep fraction the schedule starts from")
    parser.add_argument("--final-keep-fraction", type=float, default=0.5,
                        help="ngf_scheduled: keep fraction at --pruning-end")
    parser.add_argument("--schedule-power", type=float, default=3.0, help="ngf_scheduled: power of the decay")
    parser.add_argument("--prune-fraction", type=float, default=0.5,
                        help="magnitude: fraction of the weights to zero, in [0, 1)")
    parser.add_argument("--pruning-apply", type=int, default=0, help="magnitude: the period after which it prunes")
    parser.add_argument("--video-every", type=int, default=None,
                        help="rl: a GIF of a greedy episode every N episodes, needs pygame (default: none)")
    parser.add_argument("--root", default="results", help="folder under which the run folder is made")
    parser.add_argument("--name", default=None, help="run name (default: method, seed and time)")
    parser.add_argument("--force", action="store_true", help="overwrite a run of the same --name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def check_arguments(args: argparse.Namespace) -> TrainingPruner:
    """Every flag checked before any data is loaded or any training starts; the pruner."""
    check_at_least("--epochs", args.epochs, 1)
    check_at_least("--episodes", args.episodes, 1)
    check_at_least("--patience", args.patience, 1)
    check_at_least("--seed", args.seed, 0)
    check_at_least("--video-every", args.video_every, 1)
    for flag in ("--keep-fraction", "--initial-keep-fraction", "--final-keep-fraction"):
        check_fraction(flag, getattr(args, flag[2:].replace("-", "_")))
    if not 0 <= args.prune_fraction < 1:
        raise UsageError(f"--prune-fraction must lie in [0, 1), got {args.prune_fraction}")
    for flag in ("--critical-start", "--pruning-start", "--pruning-apply"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")), 0)
    check_at_least("--critical-duration", args.critical_duration, 1)
    check_at_least("--pruning-frequency", args.pruning_frequency, 1)
    if Path(args.root).exists() and not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root} is a file; give a folder for the runs")
    if args.task == "rl":
        import gymnasium as gym

        try:
            gym.spec(args.env)
        except gym.error.Error as exc:
            raise UsageError(f"--env {args.env}: {exc}") from exc
    try:
        pruner = make_pruner(args)
    except ValueError as exc:
        raise UsageError(f"--pruning-method {args.pruning_method}: {exc}") from exc
    periods, unit = (args.epochs, "epochs") if args.task == "supervised" else (args.episodes, "episodes")
    last = pruner.last_pruning_period()
    if last >= periods:
        flags = ", ".join(f"--{flag.replace('_', '-')} {getattr(args, flag)}"
                          for flag in pruner_flags(type(pruner)).values() if isinstance(getattr(args, flag), int))
        raise UsageError(f"--pruning-method {args.pruning_method} ({flags}) prunes last after period {last}, beyond "
                         f"the run's {periods} {unit} (periods 0 to {periods - 1}); shorten the schedule or "
                         f"train longer")
    return pruner


def main() -> None:
    args = build_parser().parse_args()
    pruner = check_arguments(args)
    name = args.name or f"{args.pruning_method}-s{args.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    if args.task == "supervised":
        cfg = SupervisedConfig(args.dataset, args.model, args.epochs, patience=args.patience, seed=args.seed,
                               limit=args.limit, data_dir=args.data_dir, device=args.device)
        out = check_out_folder(Path(args.root) / "supervised" / args.dataset / args.model / name,
                               ("results.json",), args.force)
        results, model = train_supervised(cfg, pruner, show_progress=not args.quiet)
        summary = f"test accuracy {results['test_accuracy']:.4f}"
    else:
        cfg = RLConfig(args.env, args.episodes, seed=args.seed, video_every=args.video_every)
        out = check_out_folder(Path(args.root) / "rl" / args.env / "policy_mlp" / name, ("results.json",),
                               args.force)
        results, model = train_rl(cfg, pruner, out, show_progress=not args.quiet)
        summary = (f"mean return (last 100) {results['mean_return_last_100']:.1f}, "
                   f"greedy test {results['greedy_test_mean_return']}")
    config = {k: v for k, v in vars(args).items() if k not in ("quiet", "force")}
    save_run(out, config, results, model, pruner.example)
    print(f"{args.pruning_method}: {summary}; params {results['params_before']:,} -> {results['params_after']:,} "
          f"(pruning rate {results['pruning_rate']:.1%}), {results['training_seconds']:.0f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
