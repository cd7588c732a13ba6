"""Does a FLOPs cut give a real speed-up? Latency of pruned against original networks.

    python scripts/bench_latency.py --target vgg16_cifar10 [--flops-budgets 0.3,0.5,0.7] [--untrained]
    python scripts/bench_latency.py --target cnn_cifar10 --table 20 [--rounds 5] [--engine onnxruntime] \
        [--statistic min] [--table-rounds 3] [--round-to 8]   # the table's error

Prunes the target with the uniform heuristic at each budget, exports it (ONNX, checked
against the in-memory model) and times original and pruned at batch 1 and 64 in PyTorch
(eager, fp32) and in onnxruntime; prints one row per budget and engine with the FLOPs ratio
beside the measured speed-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from agents.base import run_episode
from agents.heuristics import UniformPolicy
from experiments.latency_error import print_table_errors, table_errors
from prune_env.cli import (
    add_target_arguments,
    check_at_least,
    check_budget_reachable,
    make_parser,
    parse_counts,
    parse_fractions,
    run_main,
    target_from_args,
)
from prune_env.cost import measure_latency, onnx_latency
from prune_env.env import PruningEnv
from prune_env.export import export_onnx


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--flops-budgets", default="0.3,0.5,0.7",
                        help="fractions of the FLOPs to keep, each in (0, 1], separated by commas")
    parser.add_argument("--batch-sizes", default="1,64", help="batch sizes to time, separated by commas")
    parser.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="keep a multiple of N units in every layer, or all of them (default: any count); "
                             "with --table, the random allocations are rounded so and checked against the table "
                             "an env with this rounding builds")
    parser.add_argument("--untrained", action="store_true", help="time a fresh network (no checkpoint needed)")
    parser.add_argument("--table", type=int, default=0, metavar="N",
                        help="instead: check the per-layer latency table's prediction against measured end-to-end "
                             "latency on N random allocations at each batch size (the table is built or read from "
                             "its cache)")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"],
                        help="engine of the --table check")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timing rounds of the --table check, each 20 alternating passes that run every network "
                             "once in a random order (default: 5)")
    parser.add_argument("--statistic", default="median", choices=["median", "min"],
                        help="what the --table check's table and timers take of their runs: the median run "
                             "(default) or the fastest (the network's own cost, least moved by other processes)")
    parser.add_argument("--table-rounds", type=int, default=1,
                        help="time the --table check's table in 10 x this many alternating passes (each runs every "
                             "cell once), each cell taking the --statistic over them (default: 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the --table check's random allocations (default: 0; the table's own calibration "
                             "allocations come from a seed of their own)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    budgets = parse_fractions(args.flops_budgets, "--flops-budgets")
    batches = parse_counts(args.batch_sizes, "--batch-sizes")
    target = target_from_args(args)
    check_at_least("--round-to", args.round_to, 1)
    check_at_least("--rounds", args.rounds, 1)
    check_at_least("--table-rounds", args.table_rounds, 1)
    check_at_least("--seed", args.seed, 0)
    if not args.table:
        check_budget_reachable(target, min(budgets), 0.1, flag="--flops-budgets", round_to=args.round_to)
    model = target.build_model().eval() if args.untrained else target.load_pretrained()
    if args.table:
        rows = table_errors(target, model, batches, args.table, args.engine, seed=args.seed, rounds=args.rounds,
                            statistic=args.statistic, table_rounds=args.table_rounds, round_to=args.round_to)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table_errors(rows)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_onnx = Path(tmp) / "base.onnx"
        export_onnx(model, target.example_input(2), base_onnx)
        for budget in budgets:
            env = PruningEnv(target, model=model, flops_budget=budget, val_size=8, calibration_size=64,
                             round_to=args.round_to)
            record = run_episode(env, UniformPolicy(env))
            pruned_onnx = Path(tmp) / f"pruned-{budget}.onnx"
            diff = export_onnx(env.last_model, target.example_input(2), pruned_onnx)
            for batch in batches:
                x = target.example_input(batch)
                torch_base = measure_latency(model, x, device=target.device)["ms"]
                torch_pruned = measure_latency(env.last_model, x, device=target.device)["ms"]
                ort_base, ort_pruned = onnx_latency(base_onnx, x), onnx_latency(pruned_onnx, x)
                for engine, device, base_ms, pruned_ms in (("torch", target.device, torch_base, torch_pruned),
                                                           ("onnxruntime", "cpu", ort_base, ort_pruned)):
                    rows.append({"target": target.name, "flops_ratio": round(record["flops_ratio"], 4),
                                 "device": str(device),
                                 "params_ratio": round(record["params_pruned"] / record["params_base"], 4),
                                 "engine": engine, "batch": batch, "base_ms": round(base_ms, 3),
                                 "pruned_ms": round(pruned_ms, 3), "speedup": round(base_ms / pruned_ms, 2),
                                 "flops_speedup": round(1 / record["flops_ratio"], 2), "onnx_max_abs_diff": diff,
                                 "threads": torch.get_num_threads()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'FLOPs':>6} {'engine':>12} {'batch':>5} {'base ms':>9} {'pruned ms':>9} {'speed-up':>8} {'1/FLOPs':>8}")
    for r in rows:
        print(f"{r['flops_ratio']:6.3f} {r['engine']:>12} {r['batch']:5d} {r['base_ms']:9.3f} {r['pruned_ms']:9.3f} "
              f"{r['speedup']:7.2f}x {r['flops_speedup']:7.2f}x")
    print(f"({rows[0]['threads']} threads; ONNX outputs within {max(r['onnx_max_abs_diff'] for r in rows):.2g} "
          "of PyTorch)")


if __name__ == "__main__":
    run_main(main)
