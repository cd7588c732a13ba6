"""Compare heuristics and learned agents on a target at several FLOPs budgets.

    python scripts/compare.py --target cnn_cifar10 --flops-budgets 0.3,0.5,0.7 --seeds 3 \\
        [--runs runs/A runs/B] [--train-agents ppo,reinforce] [--episodes N] --out results/cnn

Writes OUT/results.csv and OUT/results.md (one row per policy and budget, mean ± std over
seeds), OUT/runs.csv (one row per run) and OUT/pareto.png; each run's report is kept in
OUT/runs/<policy>-b<budget>-s<seed>/, so --resume after an interruption skips finished runs.
With --ray (a local Ray cluster) or --ray-address ADDR (an existing one) the runs are Ray
tasks of --threads CPUs each, with the same reports and tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents import HEURISTICS
from agents.parallel import add_parallel_arguments, parallelism_from_args
from agents.search import AGENTS
from experiments.compare import HEURISTIC_NAMES, compare
from experiments.train import check_rounds
from prune_env.cli import (
    UsageError,
    add_evaluation_arguments,
    add_final_finetune_arguments,
    add_target_arguments,
    check_at_least,
    check_budget_reachable,
    check_out_folder,
    evaluation_overrides,
    final_finetune_overrides,
    make_parser,
    parse_fractions,
    refuse_latency_budget,
    run_main,
    target_from_args,
)
from prune_env.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--flops-budgets", default="0.3,0.5,0.7",
                        help="fractions of the FLOPs to keep, each in (0, 1], separated by commas")
    parser.add_argument("--seeds", type=int, default=3, help="runs per policy and budget, with seeds 0..N-1")
    parser.add_argument("--heuristics", default=",".join(HEURISTIC_NAMES),
                        help=f"heuristics to run, separated by commas: any of {','.join(HEURISTICS)}")
    parser.add_argument("--runs", nargs="*", default=[], help="run folders of train_agent.py to include")
    parser.add_argument("--train-agents", default="",
                        help=f"train these searchers too, each with --episodes episodes, separated by commas: "
                             f"any of {','.join(AGENTS)} (default: none)")
    parser.add_argument("--agent-budgets", default=None, help="train agents only at these budgets (default: all)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="search episodes of trained agents (default: the target's config)")
    parser.add_argument("--reselect-top", type=int, default=None,
                        help="re-measure each search's best K networks on validation examples it never saw and keep "
                             "the best by that (default: the target's config, 0: off)")
    parser.add_argument("--reselect-steps", type=int, default=None,
                        help="with --reselect-top: fine-tune a copy of each re-selected network this many steps "
                             "before measuring it (default: the target's config, 0: off)")
    add_final_finetune_arguments(parser, "every policy's network")
    parser.add_argument("--config", default=None,
                        help="a YAML file overriding the packaged prune_env/configs/<target>.yaml and "
                             "<agent>.yaml; flags override it (default: none)")
    add_evaluation_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the tables and the plot")
    parser.add_argument("--force", action="store_true", help="overwrite the results already in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted comparison in --out: finished runs (OUT/runs/*/report.json) "
                             "are read back, interrupted agent runs continue from their checkpoints")
    add_parallel_arguments(parser, workers=False, what="the runs as Ray tasks")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    check_at_least("--seeds", args.seeds, 1)
    check_at_least("--episodes", args.episodes, 1)
    check_at_least("--reselect-top", args.reselect_top, 0)
    check_at_least("--reselect-steps", args.reselect_steps, 0)
    out = check_out_folder(args.out, ("results.csv", "runs.csv"), args.force or args.resume)
    parallel = parallelism_from_args(args)
    missing = [r for r in args.runs if not (Path(r) / "report.json").is_file()]
    if missing:
        raise UsageError(f"--runs {missing[0]} holds no report.json; give run folders of scripts/train_agent.py "
                         "or scripts/evaluate.py")
    other = [(r, t) for r in args.runs if (t := json.loads((Path(r) / "report.json").read_text()).get("target"))
             not in (None, args.target)]
    if other:
        raise UsageError(f"--runs {other[0][0]} is a run on {other[0][1]}, not {args.target}; compare runs of one "
                         "target at a time")
    budgets = parse_fractions(args.flops_budgets, "--flops-budgets")
    agent_budgets = parse_fractions(args.agent_budgets, "--agent-budgets") if args.agent_budgets else None
    if agent_budgets is not None and not set(agent_budgets) <= set(budgets):
        raise UsageError(f"--agent-budgets {args.agent_budgets} must be among --flops-budgets {args.flops_budgets}")
    heuristics = tuple(h for h in args.heuristics.split(",") if h)
    unknown = set(heuristics) - set(HEURISTICS)
    if unknown:
        raise UsageError(f"unknown heuristics {sorted(unknown)}; choose from {', '.join(HEURISTICS)}")
    agents = tuple(a for a in args.train_agents.split(",") if a)
    if set(agents) - set(AGENTS):
        raise UsageError(f"unknown agents {sorted(set(agents) - set(AGENTS))}; choose from {', '.join(AGENTS)}")
    overrides = {"env": evaluation_overrides(args),
                 "search": {"episodes": args.episodes, "reselect_top": args.reselect_top,
                            "reselect_finetune_steps": args.reselect_steps},
                 "evaluate": final_finetune_overrides(args)}
    config = load_config(args.target, config_file=args.config, overrides=overrides)
    agent_configs = {a: load_config(args.target, a, args.config, overrides) for a in agents}
    for agent_config in (config, *agent_configs.values()):
        check_rounds(agent_config)
    refuse_latency_budget(config, "compare.py")
    target = target_from_args(args)
    check_budget_reachable(target, min(budgets), config["env"]["min_keep"], flag="--flops-budgets", round_to=config["env"].get("round_to"))
    target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
    compare(target, config, budgets, list(range(args.seeds)), out, heuristics=heuristics,
            train_agents=agents, agent_configs=agent_configs, agent_budgets=agent_budgets,
            runs=[Path(r) for r in args.runs], resume=args.resume, parallel=parallel)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, runs.csv, pareto.png")


if __name__ == "__main__":
    run_main(main)
