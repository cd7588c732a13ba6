"""Prune a target with a policy at a FLOPs budget and measure it on the test split.

    python scripts/evaluate.py --target cnn_cifar10 --policy l1 --flops-budget 0.5 --out runs/eval-l1
    python scripts/evaluate.py --target cnn_cifar10 --policy runs/NAME --flops-budget 0.5 --out runs/eval-ppo

POLICY is a heuristic (uniform, l1, ngf, ngf_scheduled, random) or a run folder / saved agent.
Writes OUT/report.json and OUT/config.json and prints a short table.
"""

from __future__ import annotations

import argparse
import time

from agents import make_policy
from agents.base import prune_with
from prune_env.cli import (
    add_evaluation_arguments,
    add_target_arguments,
    check_at_least,
    check_fraction,
    evaluation_overrides,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.report import final_report, format_report, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--flops-budget", type=float, default=None)
    parser.add_argument("--finetune-epochs", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--criterion", default=None, help="unit criterion (default: the policy's own)")
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--config", default=None, help="a YAML file overriding configs/<target>.yaml")
    add_evaluation_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    check_fraction("--flops-budget", args.flops_budget)
    check_at_least("--val-size", args.val_size, 1)
    config = load_config(args.target, config_file=args.config, overrides={
        "env": {"flops_budget": args.flops_budget, "criterion": args.criterion, "val_size": args.val_size,
                **evaluation_overrides(args)},
        "evaluate": {"finetune_epochs": args.finetune_epochs},
    })
    target = target_from_args(args)
    started = time.perf_counter()
    env, policy = make_policy(args.policy, target, config["env"], seed=args.seed,
                              criterion_given=args.criterion is not None)
    model, record, episodes = prune_with(env, policy, args.seed)
    search_seconds = time.perf_counter() - started
    report, _ = final_report(env, model, record, policy=getattr(policy, "name", args.policy), seed=args.seed,
                             search_seconds=search_seconds, episodes=episodes,
                             finetune_epochs=config["evaluate"]["finetune_epochs"],
                             latency_batch_size=config["evaluate"]["latency_batch_size"], show_progress=True)
    config.update(target=target.name, policy=args.policy, seed=args.seed)
    path = write_report(args.out, report, config)
    print(format_report(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
