"""Benchmark the environment: episodes per second and where the time goes.

    python scripts/bench_env.py --target cnn_cifar10 [--episodes 20] [--evaluation MODE] \
        [--agent random_search] [--untrained] [--no-cache]

Runs episodes at the configured budget (random actions, or a searcher from
``agents.search.AGENTS`` learning for that many episodes) and prints seconds per episode,
the share of episode time spent in surgery, preparation (the evaluation mode), evaluation
and FLOPs/params counting, and the measurement cache's hits and misses. For targets that
evaluate in bfloat16 it also prints the base metric in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from agents.search import AGENTS, action_mode_of, make_agent
from prune_env.cli import (
    add_evaluation_arguments,
    add_target_arguments,
    check_at_least,
    check_latency_budget,
    evaluation_overrides,
    make_parser,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.env import PruningEnv
from target_models.device import autocast_enabled, cpu_autocast_setting
from target_models.training import accuracy, predict_logits


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--episodes", type=int, default=20, help="episodes to time (after one warm-up episode)")
    parser.add_argument("--untrained", action="store_true", help="a fresh network instead of the checkpoint")
    parser.add_argument("--agent", default="random", choices=["random", *AGENTS],
                        help="random actions, or a searcher that learns for --episodes episodes")
    parser.add_argument("--no-cache", action="store_true", help="measure every episode (time a measurement)")
    add_evaluation_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    check_at_least("--episodes", args.episodes, 1)
    config = load_config(args.target, overrides={"env": evaluation_overrides(args)})["env"]
    agent_config = None if args.agent == "random" else load_config(args.target, args.agent)["agent"]
    target = target_from_args(args)
    check_latency_budget(target, config)
    started = time.perf_counter()
    action_mode = "ratio" if args.agent == "random" else action_mode_of(args.agent)
    env = PruningEnv(target, model=target.build_model() if args.untrained else None, **config,
                     cache=not args.no_cache, action_mode=action_mode)
    setup = time.perf_counter() - started
    env.action_space.seed(0)

    def episode(seed: int) -> None:
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, done, _, _ = env.step(env.action_space.sample())

    episode(-1 % 2**31)  # warm-up: first-call costs of torch are not the environment's
    env.timings.clear()
    env.cache_hits = env.cache_misses = 0
    started = time.perf_counter()
    if args.agent == "random":
        for seed in range(args.episodes):
            episode(seed)
    else:
        make_agent(args.agent, env, agent_config, seed=0).learn(args.episodes)
    total = time.perf_counter() - started
    played = int(env.timings["episodes"])
    t = env.timings
    result = {
        "target": target.name, "agent": args.agent, "evaluation": env.evaluation.name, "episodes": played,
        "layers": env.n_layers, "setup_seconds": round(setup, 2),
        "episodes_per_second": round(played / total, 3), "seconds_per_episode": round(total / played, 3),
        "cache_hits": env.cache_hits, "cache_misses": env.cache_misses,
        "seconds_per_measured_episode": round(total / max(1, env.cache_misses), 3),
        "share_surgery": round(t["surgery"] / total, 3), "share_preparation": round(t["preparation"] / total, 3),
        "share_evaluation": round(t["evaluation"] / total, 3), "share_flops_params": round(t["flops"] / total, 4),
        "share_other": round(1 - (t["surgery"] + t["preparation"] + t["evaluation"] + t["flops"]) / total, 3),
        "val_size": config.get("val_size"), "threads": torch.get_num_threads(),
    }
    if hasattr(target, "split_tensors"):  # is bf16 evaluation faster, and accurate enough?
        x, y = target.split_tensors("val", config.get("val_size"))
        for precision, mixed in (("fp32", False), ("bf16", True)):
            with cpu_autocast_setting("on"):  # measure bf16 even where the CPU emulates it
                predict_logits(env.model, x[:64], mixed_precision=mixed, device=target.device)  # warm-up
                started = time.perf_counter()
                result[f"val_metric_{precision}"] = round(accuracy(predict_logits(env.model, x, mixed_precision=mixed, device=target.device), y), 4)
                result[f"val_seconds_{precision}"] = round(time.perf_counter() - started, 3)
        uses_bf16 = autocast_enabled(target.device, getattr(target, "eval_autocast", False))
        result["eval_uses"] = "bf16" if uses_bf16 else "fp32"
    print(json.dumps(result) if args.json else "\n".join(f"{k:22s} {v}" for k, v in result.items()))


if __name__ == "__main__":
    run_main(main)
