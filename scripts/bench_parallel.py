"""Episodes per second of a search, serial and with parallel episode workers, here and on Ray.

    python scripts/bench_parallel.py --target cnn_cifar10 --agent random_search --episodes 32 \\
        [--settings 1x2,2x1,ray1x2,ray2x1] [--out results/bench-parallel.json]

Each setting (WORKERSxTHREADS, ``ray`` in front: as Ray actors on a local cluster) runs the
same search with the same seed from the same fresh environment; the script checks that
every setting measured the same rewards, and prints the seconds to start the workers, the
search's seconds and episodes per second, the speed-up over the first setting, and the
parallel overhead: the seconds per episode the main process spends alone (planning,
replaying, callbacks) while the workers wait. Run it
on an idle machine: two torch processes at once slow each other down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agents.parallel import Parallelism, init_ray
from agents.search import AGENTS, SearchMonitor, action_mode_of, make_agent, search
from prune_env.cli import (
    UsageError,
    add_target_arguments,
    check_at_least,
    make_parser,
    run_main,
    target_from_args,
)
from prune_env.config import load_config
from prune_env.env import PruningEnv


def parse_setting(text: str) -> tuple[str, Parallelism]:
    ray = text.startswith("ray")
    try:
        workers, threads = (int(x) for x in text.removeprefix("ray").split("x"))
    except ValueError as exc:
        raise UsageError(f"--settings: {text!r} is not WORKERSxTHREADS (e.g. 2x1, or ray2x1)") from exc
    return text, Parallelism(workers, threads, ray)


def run_setting(target, env_config: dict, agent: str, episodes: int, parallel: Parallelism, seed: int) -> dict:
    """One search; its seconds (workers' start and search) and rewards."""
    env = PruningEnv(target, **env_config, action_mode=action_mode_of(agent))
    searcher = make_agent(agent, env, seed=seed)
    started = time.perf_counter()
    searcher.workers = parallel.start(env)
    start_seconds = time.perf_counter() - started
    monitor = SearchMonitor(env, total_episodes=episodes, show_progress=False)
    started = time.perf_counter()
    try:
        search(searcher, env, monitor, episodes)
    finally:
        seconds = time.perf_counter() - started
        if searcher.workers is not None:
            searcher.workers.close()
    played = monitor.episodes  # PPO finishes its last rollout: it may play more than it counts
    return {"start_seconds": round(start_seconds, 2), "search_seconds": round(seconds, 2),
            "episodes": played, "episodes_per_second": played / seconds,
            "seconds_per_episode": seconds / played, "rewards": monitor.rewards,
            "cache_hits": env.cache_hits,
            # parallel runs: seconds this process spent alone (planning, replaying, callbacks) and waiting
            "main_seconds_per_episode": env.timings["parallel_main"] / played,
            "measure_seconds": round(env.timings["parallel_measure"], 2)}


def build_parser():
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--agent", default="random_search", choices=sorted(AGENTS),
                        help="the searcher whose episodes are measured (default: random_search)")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per setting")
    parser.add_argument("--flops-budget", type=float, default=0.5, help="fraction of the FLOPs to keep")
    parser.add_argument("--settings", default="1x2,2x1,ray1x2,ray2x1",
                        help="WORKERSxTHREADS per setting, ray in front for Ray actors, separated by commas")
    parser.add_argument("--seed", type=int, default=0, help="seeds the search")
    parser.add_argument("--out", default=None, help="a JSON file for the figures (default: none)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    check_at_least("--episodes", args.episodes, 1)
    settings = [parse_setting(s) for s in args.settings.split(",") if s]
    target = target_from_args(args)
    config = load_config(args.target, args.agent, overrides={"env": {"flops_budget": args.flops_budget}})
    if any(p.uses_ray for _, p in settings):
        init_ray(cpus=None)
    rows = {}
    for name, parallel in settings:
        rows[name] = run_setting(target, config["env"], args.agent, args.episodes, parallel, args.seed)
        r = rows[name]
        print(f"{name:>8}: workers start {r['start_seconds']:6.1f} s, search {r['search_seconds']:7.1f} s, "
              f"{r['episodes_per_second']:.3f} episodes/s", flush=True)
    first = next(iter(rows.values()))
    same = all(r["rewards"] == first["rewards"] for r in rows.values())
    print(f"\n{args.target}, {args.agent}, {first['episodes']} episodes played, evaluation {config['env']['evaluation']}; "
          f"the same rewards in every setting: {same}")
    print(f"{'setting':>8} {'start s':>8} {'search s':>9} {'episodes/s':>11} {'s/episode':>10} {'speed-up':>9} "
          f"{'main s/episode':>15}")
    for name, r in rows.items():
        print(f"{name:>8} {r['start_seconds']:8.1f} {r['search_seconds']:9.1f} {r['episodes_per_second']:11.3f} "
              f"{r['seconds_per_episode']:10.3f} {first['search_seconds'] / r['search_seconds']:9.2f}x "
              f"{r['main_seconds_per_episode']:15.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"target": args.target, "agent": args.agent, "episodes": args.episodes,
                                              "same_rewards": same, "settings": rows}, indent=2))
    if not same:
        raise SystemExit("the settings measured different rewards")


if __name__ == "__main__":
    run_main(main)
