"""Latency-aware against FLOPs-aware pruning at the same measured-latency target.

    python scripts/latency_compare.py --target cnn_cifar10 --latency-budgets 0.5,0.3 --batch-sizes 1,64 \\
        [--agent random_search] [--episodes 100] [--seeds 1] [--round-to 8] --out results/latency-cnn

For every batch size, latency budget (a fraction of the unpruned network's latency at that
batch, predicted by the per-layer latency table) and seed it builds five networks: uniform
pruning fitted to the budget, the searcher at the FLOPs that uniform pruning needed, the
searcher at those FLOPs rescaled towards the latency target (by the budget over the first
search's predicted latency ratio), the searcher at the latency budget, and the same with
--round-to. CPU targets only (onnxruntime times on the CPU). Each is fine-tuned (the
target's standard fine-tune) and tested; then all of them and the unpruned network are timed
in PyTorch and onnxruntime, interleaved in one process. Writes OUT/runs.csv (one row per
network), OUT/results.csv and OUT/results.md. Every searcher gets the same --episodes.
Started again with the same --out, it skips the networks already built and only times them:
each run is one timing session, appended to OUT/timings.csv, and the results take every
network's median over the sessions (one process's timings at batch 1 can be off by 15%).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agents.search import AGENTS
from experiments.latency_compare import (
    TIMING_REPEATS,
    host_drift,
    lowest_latency_ratio,
    over_sessions,
    record_session,
    run_arms,
    summarize,
    time_networks,
)
from prune_env.cli import (
    UsageError,
    add_target_arguments,
    check_at_least,
    make_parser,
    parse_counts,
    parse_fractions,
    run_main,
    target_from_args,
)
from prune_env.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--latency-budgets", default="0.5,0.3",
                        help="fractions of the unpruned latency to keep, each in (0, 1], separated by commas")
    parser.add_argument("--batch-sizes", default="1,64", help="batch sizes of the latency budget, separated by commas")
    parser.add_argument("--agent", default="random_search", choices=list(AGENTS), help="the searcher of every search")
    parser.add_argument("--episodes", type=int, default=None, help="episodes of every search (default: the config)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per arm, with seeds 0..N-1")
    parser.add_argument("--round-to", type=int, default=8, metavar="N", help="rounding of the rounded latency search")
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help="fine-tuning before the test split (default: the target's config)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation examples per measurement (default: the target's config)")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help=f"rounds of {TIMING_REPEATS} alternating runs of every network; the table's statistic "
                             "(env.latency_statistic: median or min) of all of them is reported")
    parser.add_argument("--latency-threads", type=int, default=None, metavar="T",
                        help="torch threads of the latency tables and of the timing (default: the config's, else the "
                             "process's); searches and fine-tunes use the process's")
    parser.add_argument("--config", default=None, help="a YAML file overriding the packaged configs")
    parser.add_argument("--out", required=True, help="folder for the run folders and the tables")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    budgets = parse_fractions(args.latency_budgets, "--latency-budgets")
    batches = parse_counts(args.batch_sizes, "--batch-sizes")
    for flag, value, least in (("--episodes", args.episodes, 1), ("--seeds", args.seeds, 1),
                               ("--round-to", args.round_to, 2), ("--finetune-epochs", args.finetune_epochs, 0),
                               ("--val-size", args.val_size, 1), ("--timing-rounds", args.timing_rounds, 1),
                               ("--latency-threads", args.latency_threads, 1)):
        check_at_least(flag, value, least)
    overrides = {"env": {"val_size": args.val_size, "latency_threads": args.latency_threads},
                 "search": {"episodes": args.episodes}, "evaluate": {"finetune_epochs": args.finetune_epochs}}
    config = load_config(args.target, args.agent, args.config, overrides)
    target = target_from_args(args)
    if not target.has_checkpoint():
        raise UsageError(f"{target.name} has no pretrained checkpoint ({target.checkpoint_path}); run "
                         f"python scripts/pretrain.py --target {target.name} first, or pass --checkpoint")
    if target.device.type != "cpu":
        raise UsageError("latency_compare.py times in PyTorch and onnxruntime on the CPU; run it with --device cpu")
    for batch in batches:  # every budget reachable, checked (and the tables built) before any search
        for round_to in (None, args.round_to):
            try:
                lowest = lowest_latency_ratio(target, batch, config["env"], round_to)
            except ValueError as exc:
                raise UsageError(f"{target.name}: {exc}") from exc
            if min(budgets) < lowest * 0.999:
                rounding = f" and --round-to {round_to}" if round_to else ""
                raise UsageError(f"--latency-budgets {min(budgets)} is below the {lowest:.3f} that min_keep="
                                 f"{config['env']['min_keep']}{rounding} allow at batch {batch}; choose larger budgets")
    target.ensure_pretrained(start=False)  # an interrupted pretraining is finished, not pruned half-trained
    out = Path(args.out)
    runs = run_arms(target, config, args.agent, budgets, batches, list(range(args.seeds)), out, args.round_to)
    statistic = config["env"].get("latency_statistic", "median")  # the table's: ratios compare like with like
    passes = args.timing_rounds * TIMING_REPEATS
    print(f"timing every network (PyTorch and onnxruntime, the {statistic} of {passes} runs)...")
    table = time_networks(target, runs, rounds=args.timing_rounds, statistic=statistic,
                          threads=config["env"].get("latency_threads"))
    table.to_csv(out / "runs.csv", index=False)
    history = record_session(out, table, time.strftime("%Y-%m-%d %H:%M:%S"))
    results = summarize(over_sessions(history))
    results.to_csv(out / "results.csv", index=False)
    drift = host_drift(target, batches, config["env"], table)
    header = (f"Target `{target.name}`, {args.agent} with {config['search']['episodes']} episodes per search, "
              f"fine-tuned {config['evaluate']['finetune_epochs']} epoch(s); measured latency ratios are "
              f"pruned / unpruned at the budget's batch size, the {statistic} of {passes} "
              f"alternating runs each, and the median over the timing sessions (one per invocation of this "
              f"script; `sessions`: how many timed each row, in {out}/timings.csv).\n\nHost speed against the tables':\n\n"
              + "".join(f"- {line}\n" for line in drift) + "\n")
    (out / "results.md").write_text(header + results.to_markdown(index=False) + "\n")
    print((out / "results.md").read_text())
    print(f"wrote {out}/runs.csv (this session), timings.csv (every session), results.csv, results.md; run the "
          f"same command again for another timing session")


if __name__ == "__main__":
    run_main(main)
