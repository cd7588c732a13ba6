"""Prune a target with a policy at a FLOPs budget and measure it on the test split.

    python scripts/evaluate.py --target cnn_cifar10 --policy l1 --flops-budget 0.5 --out runs/eval-l1
    python scripts/evaluate.py --target cnn_cifar10 --policy runs/NAME --flops-budget 0.5 --out runs/eval-ppo
    python scripts/evaluate.py --target lstm_imdb --widths 64,83,35 --out runs/eval-widths

POLICY is a heuristic (uniform, l1, ngf, ngf_scheduled, random) or a run folder / saved agent;
--widths measures one architecture instead: those unit counts per prunable layer, the units
chosen by the criterion, whatever the budget.
Writes OUT/report.json and OUT/config.json and prints a short table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agents import HEURISTICS, check_policy, make_policy, saved_run
from agents.base import PrunesInRounds, prune_with
from agents.heuristics import FixedWidths, in_rounds
from experiments.report import final_report, format_report, write_report
from prune_env.cli import (
    UsageError,
    add_evaluation_arguments,
    add_final_finetune_arguments,
    add_target_arguments,
    check_at_least,
    check_budget_reachable,
    check_fraction,
    check_latency_budget,
    check_out_folder,
    evaluation_overrides,
    final_finetune_overrides,
    make_parser,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.env import PruningEnv
from prune_env.importance import CRITERIA
from target_models.checkpoints import find_checkpoint


def parse_widths(text: str) -> list[int]:
    """``--widths``: whole numbers separated by commas."""
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--policy",
                        help=f"a heuristic ({', '.join(HEURISTICS)}), or a run folder of train_agent.py "
                             "or its saved agent file")
    chosen.add_argument("--widths", type=parse_widths, default=None,
                        help="unit counts per prunable layer, separated by commas (e.g. 64,83,35): measure "
                             "that one architecture, its units chosen by --criterion (default: the target's)")
    parser.add_argument("--flops-budget", type=float, default=None,
                        help="fraction of the FLOPs to keep, in (0, 1] (default: the target's config)")
    add_final_finetune_arguments(parser, "the policy's network")
    parser.add_argument("--seed", type=int, default=0, help="seeds the policy and its episode")
    parser.add_argument("--criterion", default=None, choices=list(CRITERIA),
                        help="which units of a layer go (default: the policy's own, else the target's config)")
    parser.add_argument("--config", default=None,
                        help="a YAML file overriding the packaged prune_env/configs/<target>.yaml; flags override "
                             "it (default: none)")
    add_evaluation_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for report.json and config.json")
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    check_fraction("--flops-budget", args.flops_budget)
    final_flags = final_finetune_overrides(args)
    check_at_least("--seed", args.seed, 0)
    check_out_folder(args.out, ("report.json",), args.force)
    if args.policy is not None:
        check_policy(args.policy)
    if (args.rounds or 1) > 1 and issubclass(HEURISTICS.get(args.policy, object), PrunesInRounds):
        raise UsageError(f"--rounds: {args.policy} prunes in rounds of its own")
    flags = {"flops_budget": args.flops_budget, "criterion": args.criterion, **evaluation_overrides(args)}
    run = saved_run(args.policy) if args.policy else None  # a run folder: its own settings, unless a flag says otherwise
    trained_on = run["config"].get("target") if run else None
    if trained_on not in (None, args.target):
        raise UsageError(f"--policy {args.policy} is a run on {trained_on}, not {args.target}: pass --target "
                         f"{trained_on}, or a run of {args.target}")
    recorded = run["config"].get("checkpoint") if run else None
    if recorded is not None and args.checkpoint is None:  # the pretrained network the run pruned
        if Path(recorded).expanduser().is_file():
            if Path(recorded).expanduser().resolve() != find_checkpoint(args.target).resolve():
                args.checkpoint = recorded
        else:
            print(f"warning: the run pruned {recorded}, which is not a file here; using this machine's "
                  f"{args.target} checkpoint instead (pass --checkpoint to choose)", file=sys.stderr)
    run_env = {k: v for k, v in (run["config"].get("env", {}) if run else {}).items() if k in flags}
    if args.flops_budget is not None or args.latency_budget is not None:  # the flag's budget, of either kind
        run_env = {k: v for k, v in run_env.items() if k not in ("flops_budget", "latency_budget")}
    config = load_config(args.target, config_file=args.config, overrides={
        "env": {**run_env, **{k: v for k, v in flags.items() if v is not None}},
        "evaluate": final_flags,
    })
    target = target_from_args(args)
    check_budget_reachable(target, config["env"]["flops_budget"], config["env"]["min_keep"],
                           round_to=config["env"].get("round_to"))
    check_latency_budget(target, config["env"])
    target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
    started = time.perf_counter()
    if args.widths is not None:
        env = PruningEnv(target, **config["env"])
        try:
            policy, policy_mode = FixedWidths(env, args.widths), "widths"
        except ValueError as error:
            raise UsageError(f"--widths: {error}") from None
    else:
        env, policy, policy_mode = make_policy(args.policy, target, config["env"], seed=args.seed,
                                               criterion_given=args.criterion is not None or run is not None,
                                               finetune_budget=config["evaluate"]["finetune_epochs"])
    try:
        policy = in_rounds(env, policy, config["evaluate"]["rounds"], seed=args.seed,
                           finetune_budget=config["evaluate"]["finetune_epochs"])
    except ValueError as error:
        raise UsageError(f"--rounds: {error}") from None
    model, record, episodes = prune_with(env, policy, args.seed)
    search_seconds = time.perf_counter() - started
    report, _ = final_report(env, model, record, policy=getattr(policy, "name", args.policy), seed=args.seed,
                             search_seconds=search_seconds, episodes=episodes,
                             finetune_epochs=config["evaluate"]["finetune_epochs"],
                             latency_batch_size=config["evaluate"]["latency_batch_size"], show_progress=True)
    report["policy_mode"] = policy_mode
    if policy_mode == "run_best":
        print(f"rebuilt the best network of {args.policy} (its keep-ratios at its own budget)")
    config.update(target=target.name, policy=args.policy or policy.name, seed=args.seed,
                  checkpoint=str(target.checkpoint_path.resolve()))
    path = write_report(args.out, report, config)
    print(format_report(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
