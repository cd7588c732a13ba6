"""Learn a pruning policy for a target, then fine-tune, measure and export the best network.

    python scripts/train_agent.py --target vgg16_cifar10 [--agent ppo|reinforce|random_search|evolution]
        [--flops-budget B] [--reward R] [--episodes N] [--seed S] [--config FILE] [--out runs/NAME] [--resume]
        [--workers N [--threads T]] [--ray | --ray-address ADDR]

Pretrains the target first when it has no checkpoint. Logs to TensorBoard under
OUT/tensorboard, checkpoints the agent under OUT/checkpoint (``--resume`` continues from
there), and writes OUT/report.json, OUT/config.json, OUT/pruned_model.pt and the exports.

With --workers N, every agent measures each batch of episodes it plays before an update
(a PPO rollout, a REINFORCE batch, a search batch, a generation) in N worker processes,
each with its own model, data and --threads torch threads; --ray (a local cluster) or
--ray-address ADDR (an existing one) makes the workers Ray actors. The results are those
of the serial run with the same seed.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from agents.parallel import add_parallel_arguments, parallelism_from_args
from agents.search import AGENTS
from experiments.report import format_report
from experiments.train import TrainRun, check_rounds, train_and_report
from prune_env.cli import (
    UsageError,
    add_evaluation_arguments,
    add_final_finetune_arguments,
    add_target_arguments,
    check_at_least,
    check_budget_reachable,
    check_fraction,
    check_latency_budget,
    evaluation_overrides,
    final_finetune_overrides,
    make_parser,
    prepare_run_folder,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.rewards import REWARDS


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--agent", default="ppo", choices=list(AGENTS), help="the searcher that learns the policy")
    parser.add_argument("--flops-budget", type=float, default=None,
                        help="fraction of the FLOPs to keep, in (0, 1] (default: the target's config)")
    parser.add_argument("--reward", default=None, choices=list(REWARDS),
                        help="the episode reward (default: the target's config)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="measured candidates the search gets (default: the target's config)")
    parser.add_argument("--reselect-top", type=int, default=None,
                        help="re-measure the search's best K networks on validation examples it never saw and keep "
                             "the best by that (default: the target's config, 0: off)")
    parser.add_argument("--reselect-steps", type=int, default=None,
                        help="with --reselect-top: fine-tune a copy of each re-selected network this many steps "
                             "before measuring it (default: the target's config, 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the agent and its episodes")
    parser.add_argument("--config", default=None,
                        help="a YAML file overriding the packaged prune_env/configs/<agent>.yaml and "
                             "<target>.yaml; flags override it (default: none)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<target>-<agent>-s<seed>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--force", action="store_true", help="overwrite the run in --out")
    add_final_finetune_arguments(parser, "the best network")
    add_evaluation_arguments(parser)
    parser.add_argument("--no-export", action="store_true", help="write no TorchScript and ONNX files")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_parallel_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.resume and not args.out:
        raise UsageError("--resume needs the --out folder of the run to continue")
    check_fraction("--flops-budget", args.flops_budget)
    check_at_least("--episodes", args.episodes, 1)
    check_at_least("--reselect-top", args.reselect_top, 0)
    check_at_least("--reselect-steps", args.reselect_steps, 0)
    check_at_least("--seed", args.seed, 0)
    parallel = parallelism_from_args(args)
    config = load_config(args.target, args.agent, args.config, overrides={
        "env": {"flops_budget": args.flops_budget, "reward": args.reward, **evaluation_overrides(args)},
        "search": {"episodes": args.episodes, "reselect_top": args.reselect_top,
                   "reselect_finetune_steps": args.reselect_steps},
        "evaluate": final_finetune_overrides(args),
    })
    if config["env"].get("reward") != "budget" and args.flops_budget is None:
        config["env"]["flops_budget"] = None
    check_rounds(config)
    out = Path(args.out or f"runs/{args.target}-{args.agent}-s{args.seed}-{datetime.now():%Y%m%d-%H%M%S}")
    target = target_from_args(args)
    check_budget_reachable(target, config["env"].get("flops_budget"), config["env"].get("min_keep", 0.1),
                           round_to=config["env"].get("round_to"))
    check_latency_budget(target, config["env"])
    prepare_run_folder(out, args.resume, args.force)
    report = train_and_report(TrainRun(target=target, agent=args.agent, config=config, out=out,
                                       seed=args.seed, resume=args.resume, export=not args.no_export,
                                       show_progress=not args.quiet, parallel=parallel))
    print(format_report(report))
    print(f"wrote {out / 'report.json'}")


if __name__ == "__main__":
    run_main(main)
