"""Which evaluation mode ranks pruned networks the way the final fine-tune does?

    python scripts/proxy_fidelity.py --target vgg16_cifar10 --flops-budget 0.5 --candidates 30 \
        [--finetune-epochs 0.1] [--modes plain,adaptive_bn,finetune] [--criteria l1,activation] \
        --out results/fidelity-vgg
    python scripts/proxy_fidelity.py --target vgg16_cifar10 --flops-budget 0.5 --runs results/compare-vgg16 \
        --out results/fidelity-vgg-runs   # the networks a comparison's searches chose

Measures every single-shot heuristic's allocation and N random ones that meet the budget
with each evaluation mode (validation slice) and after the standard fine-tune (test
split); prints Kendall tau and Spearman rho of each mode against the fine-tuned metric and
seconds per candidate (with --criteria, which criterion gives the better fine-tuned network
on the same widths), and writes OUT/fidelity.json, OUT/candidates.csv and
OUT/candidates.jsonl (an interrupted run continues from it when started again).
With --runs, the candidates are instead the networks finished runs chose (a comparison's
output folder, its runs/ folder or one run folder, several separated by commas), and the
ground truth is the fine-tuned test metric those runs already recorded: nothing is
fine-tuned again, and the fidelity is measured where a search's choice is made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.fidelity import format_summary, proxy_fidelity, rescore_runs
from prune_env.cli import (
    UsageError,
    add_evaluation_arguments,
    add_target_arguments,
    check_at_least,
    check_budget_reachable,
    check_fraction,
    check_out_folder,
    evaluation_overrides,
    make_parser,
    refuse_latency_budget,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.evaluation import EVALUATIONS
from prune_env.importance import CRITERIA


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--flops-budget", type=float, default=0.5, help="fraction of the FLOPs to keep, in (0, 1]")
    parser.add_argument("--candidates", type=int, default=30, help="random allocations besides the heuristics'")
    parser.add_argument("--modes", default=",".join(EVALUATIONS),
                        help="evaluation modes to compare, separated by commas")
    parser.add_argument("--criteria", default="",
                        help="also build every random allocation with these criteria (e.g. l1,activation) and "
                             "compare them on the same widths (default: only the target's criterion)")
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="the fine-tune whose result is the ground truth (default: the target's config)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random candidates and the fine-tunes")
    parser.add_argument("--config", default=None,
                        help="a YAML file overriding the packaged prune_env/configs/<target>.yaml; flags override "
                             "it (default: none)")
    parser.add_argument("--runs", default="",
                        help="instead of random candidates: the networks of these finished runs (comparison "
                             "folders or run folders, separated by commas), against their recorded fine-tuned metric")
    parser.add_argument("--out", required=True, help="folder for fidelity.json and the candidates")
    add_evaluation_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    check_fraction("--flops-budget", args.flops_budget)
    check_at_least("--candidates", args.candidates, 2)
    check_at_least("--seed", args.seed, 0)
    check_out_folder(args.out, results=())  # an existing run continues where it stopped
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(EVALUATIONS)
    if unknown or not modes:
        raise UsageError(f"unknown modes {sorted(unknown)}; choose from {', '.join(EVALUATIONS)}")
    criteria = tuple(c for c in args.criteria.split(",") if c)
    if set(criteria) - set(CRITERIA):
        raise UsageError(f"unknown criteria {sorted(set(criteria) - set(CRITERIA))}; choose from {', '.join(CRITERIA)}")
    config = load_config(args.target, config_file=args.config, overrides={
        "env": evaluation_overrides(args),
        "evaluate": {"finetune_epochs": args.finetune_epochs}})
    if args.runs:
        defaults = build_parser()
        ignored = ["--" + dest.replace("_", "-") for dest in ("candidates", "criteria", "seed", "finetune_epochs")
                   if getattr(args, dest) != defaults.get_default(dest)]
        if ignored:
            raise UsageError(f"--runs rescores finished runs against the fine-tune they recorded; {', '.join(ignored)} "
                             "only apply to random candidates: leave them out")
        target = target_from_args(args)
        folders = [Path(f) for f in args.runs.split(",") if f]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise UsageError(f"no such run folder: {', '.join(missing)}")
        target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
        summary = rescore_runs(target, config["env"], args.flops_budget, folders, Path(args.out), modes=modes)
        print(format_summary(summary))
        print(f"wrote {args.out}/fidelity.json, candidates.csv")
        return
    if not config["evaluate"]["finetune_epochs"] > 0:
        raise UsageError("--finetune-epochs must be above 0: the fine-tuned metric is the ground truth")
    refuse_latency_budget(config, "proxy_fidelity.py")
    target = target_from_args(args)
    check_budget_reachable(target, args.flops_budget, config["env"]["min_keep"],
                           round_to=config["env"].get("round_to"))
    target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
    summary = proxy_fidelity(target, config["env"], args.flops_budget, args.candidates, Path(args.out),
                             finetune_epochs=config["evaluate"]["finetune_epochs"], modes=modes, seed=args.seed,
                             criteria=criteria)
    print(format_summary(summary))
    print(f"wrote {args.out}/fidelity.json, candidates.csv")


if __name__ == "__main__":
    run_main(main)
