"""Compare heuristics and learned agents on a target at several FLOPs budgets.

    python scripts/compare.py --target cnn_cifar10 --flops-budgets 0.3,0.5,0.7 --seeds 3 \\
        [--runs runs/A runs/B] [--train-agents ppo,reinforce] [--episodes N] --out results/cnn

Writes OUT/results.csv and OUT/results.md (one row per policy and budget, mean ± std over
seeds), OUT/runs.csv (one row per run) and OUT/pareto.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.compare import HEURISTIC_NAMES, compare
from agents.search import AGENTS
from prune_env.cli import (
    UsageError,
    add_evaluation_arguments,
    add_target_arguments,
    check_at_least,
    evaluation_overrides,
    run_main,
    target_from_args,
)
from prune_env.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--flops-budgets", default="0.3,0.5,0.7")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--heuristics", default=",".join(HEURISTIC_NAMES))
    parser.add_argument("--runs", nargs="*", default=[], help="run folders of train_agent.py to include")
    parser.add_argument("--train-agents", default="",
                        help=f"train these searchers too, each with --episodes episodes: any of {','.join(AGENTS)}")
    parser.add_argument("--agent-budgets", default=None, help="train agents only at these budgets")
    parser.add_argument("--episodes", type=int, default=None, help="search episodes of trained agents")
    parser.add_argument("--finetune-epochs", type=float, default=None)
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--config", default=None)
    add_evaluation_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    check_at_least("--seeds", args.seeds, 1)
    check_at_least("--episodes", args.episodes, 1)
    budgets = parse_budgets(args.flops_budgets, "--flops-budgets")
    agent_budgets = parse_budgets(args.agent_budgets, "--agent-budgets") if args.agent_budgets else None
    heuristics = tuple(h for h in args.heuristics.split(",") if h)
    unknown = set(heuristics) - set(HEURISTIC_NAMES)
    if unknown:
        raise UsageError(f"unknown heuristics {sorted(unknown)}; choose from {', '.join(HEURISTIC_NAMES)}")
    agents = tuple(a for a in args.train_agents.split(",") if a)
    if set(agents) - set(AGENTS):
        raise UsageError(f"unknown agents {sorted(set(agents) - set(AGENTS))}; choose from {', '.join(AGENTS)}")
    overrides = {"env": {"val_size": args.val_size, **evaluation_overrides(args)}, "search": {"episodes": args.episodes},
                 "evaluate": {"finetune_epochs": args.finetune_epochs}}
    config = load_config(args.target, config_file=args.config, overrides=overrides)
    agent_configs = {a: load_config(args.target, a, args.config, overrides) for a in agents}
    out = Path(args.out)
    compare(target_from_args(args), config, budgets, list(range(args.seeds)), out, heuristics=heuristics,
            train_agents=agents, agent_configs=agent_configs, agent_budgets=agent_budgets,
            runs=[Path(r) for r in args.runs])
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, runs.csv, pareto.png")


def parse_budgets(text: str, flag: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",") if b]
    except ValueError as exc:
        raise UsageError(f"{flag} must be numbers separated by commas: {exc}") from exc
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise UsageError(f"{flag} must lie in (0, 1]")
    return budgets


if __name__ == "__main__":
    run_main(main)
