"""TD3 on continuous control, dense, static sparse, Neuroplastic Expansion or NGF-pruned.

    python scripts/train_neuroplastic.py --env Pendulum-v1 --methods dense,static,ne --seeds 3 --steps 20000
    python scripts/train_neuroplastic.py --env HalfCheetah-v5 --methods dense,static,ne,ngf --seeds 3 \\
        --steps 100000 --resume            # MuJoCo tasks need: pip install -e '.[mujoco]'
    python scripts/train_neuroplastic.py --env HalfCheetah-v5 --compare   # table and learning curves

Methods: dense (no masks), static (a random sparse mask at --final-sparsity, fixed), ne (the
small-to-large scheduler: sparsity from --initial-sparsity to --final-sparsity by topology
updates every --delta steps, dormant neurons released, connections grown by potential
gradients), ngf (the --ngf-keep most active units of every hidden layer kept at --ngf-at of
training). Every run writes results/td3/<env>/<network>/<method>-s<seed>/ (config.json,
results.json, curves.png, tensorboard/, checkpoint/); --resume continues interrupted runs and
skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from agents.neuroplastic import GROWN_INIT, METHODS, NEConfig
from experiments.neuroplastic import (
    TASK,
    TD3RunConfig,
    check_resumable,
    plot_learning_curves,
    run_folder,
    run_td3,
)
from experiments.train_with_pruning import compare_runs, load_runs
from prune_env.cli import UsageError, add_device_argument, check_at_least, make_parser, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--env", default="Pendulum-v1", help="a Gymnasium environment id with continuous actions")
    parser.add_argument("--methods", default="ne", help=f"methods to run, separated by commas: any of {','.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=1, help="runs per method, with seeds --seed .. --seed+N-1")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per run")
    parser.add_argument("--hidden", default="256,256", help="hidden widths of actor and critic")
    parser.add_argument("--learning-starts", type=int, default=10_000, help="random steps before training")
    parser.add_argument("--eval-every", type=int, default=5_000, help="steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=10_000, help="steps between checkpoints")
    parser.add_argument("--initial-sparsity", type=float, default=0.8, help="ne: sparsity at the start")
    parser.add_argument("--final-sparsity", type=float, default=0.25, help="ne and static: the final sparsity")
    parser.add_argument("--delta", type=int, default=1000, help="ne: steps between topology updates")
    parser.add_argument("--stop-fraction", type=float, default=0.8, help="ne: share of training with updates")
    parser.add_argument("--zeta", type=float, default=0.2, help="ne: share of connections pruned and regrown at "
                                                                 "the first update (cosine decay)")
    parser.add_argument("--grown-init", default="zero", choices=list(GROWN_INIT), help="ne: grown weights' start")
    parser.add_argument("--tau", type=float, default=0.025, help="dormancy threshold")
    parser.add_argument("--no-dormant-pruning", action="store_true", help="ne: keep dormant neurons' connections")
    parser.add_argument("--experience-review", action="store_true",
                        help="widen the replay window when the dormant ratio passes --review-threshold")
    parser.add_argument("--review-threshold", type=float, default=0.1, help="dormant ratio that widens the window")
    parser.add_argument("--window-min", type=int, default=50_000, help="replay window (recent transitions)")
    parser.add_argument("--window-max", type=int, default=1_000_000, help="widened replay window")
    parser.add_argument("--ngf-at", type=float, default=0.3, help="ngf: share of training before the pruning")
    parser.add_argument("--ngf-keep", type=float, default=0.85, help="ngf: share of units kept per hidden layer")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (small networks run fastest on one; default: 1)")
    parser.add_argument("--root", default="results", help="folder under which the run folders are made")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs, skip finished ones")
    parser.add_argument("--force", action="store_true", help="start runs again whose folders exist")
    parser.add_argument("--compare", action="store_true",
                        help="only aggregate the runs under --root for --env: comparison.csv and plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def configs(args: argparse.Namespace) -> tuple[list[str], list[TD3RunConfig], dict]:
    """The methods, one run configuration per seed and the topology settings, checked."""
    import gymnasium as gym

    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    for flag in ("steps", "seeds", "eval_every", "eval_episodes", "checkpoint_every", "delta"):
        check_at_least("--" + flag.replace("_", "-"), getattr(args, flag), 1)
    check_at_least("--learning-starts", args.learning_starts, 0)
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError as exc:
        raise UsageError(f"--hidden must be whole numbers separated by commas: {exc}") from exc
    try:
        spec_env = gym.make(args.env)
    except gym.error.DependencyNotInstalled as exc:
        raise UsageError(f"--env {args.env} needs MuJoCo: pip install -e '.[mujoco]' ({exc})") from exc
    except gym.error.Error as exc:
        raise UsageError(f"--env {args.env}: {exc}") from exc
    if not isinstance(spec_env.action_space, gym.spaces.Box):
        raise UsageError(f"--env {args.env} has {type(spec_env.action_space).__name__} actions; TD3 needs "
                         "continuous (Box) actions")
    spec_env.close()
    if "ne" in methods and args.learning_starts >= args.stop_fraction * args.steps:
        raise UsageError(f"--learning-starts {args.learning_starts} leaves ne no topology updates before "
                         f"--stop-fraction {args.stop_fraction} of --steps {args.steps}; train longer or start "
                         "learning earlier")
    topology = {"initial_sparsity": args.initial_sparsity, "final_sparsity": args.final_sparsity,
                "delta": args.delta, "stop_fraction": args.stop_fraction, "zeta": args.zeta,
                "grown_init": args.grown_init, "tau": args.tau, "dormant_pruning": not args.no_dormant_pruning,
                "experience_review": args.experience_review, "review_threshold": args.review_threshold,
                "window_min": args.window_min, "window_max": args.window_max, "ngf_at": args.ngf_at,
                "ngf_keep": args.ngf_keep}
    try:
        NEConfig(**topology)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    runs = [TD3RunConfig(env_id=args.env, steps=args.steps, seed=seed, hidden=hidden,
                         learning_starts=args.learning_starts, eval_every=args.eval_every,
                         eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every,
                         device=str(args.device))
            for seed in range(args.seed, args.seed + args.seeds)]
    return methods, runs, topology


def main() -> None:
    args = build_parser().parse_args()
    root = Path(args.root)
    if args.compare:
        table = compare_runs(load_runs(root, TASK), root, TASK)
        print(table.to_string(index=False))
        print(f"wrote {plot_learning_curves(root, args.env)}")
        return
    methods, runs, topology = configs(args)
    check_at_least("--threads", args.threads, 1)
    torch.set_num_threads(args.threads)
    for method in methods:
        for run in runs:
            out = run_folder(root, run, NEConfig(method=method, **topology))
            done = out / "results.json"
            if done.is_file() and json.loads(done.read_text()).get("steps", 0) >= run.steps and not args.force:
                print(f"{out} is finished; skipping (--force runs it again)")
                continue
            if (out / "config.json").exists() and not (args.resume or args.force):
                raise UsageError(f"{out} holds a run; pass --resume to continue it or --force to start again")
            if args.force:
                shutil.rmtree(out, ignore_errors=True)
            elif args.resume:
                try:
                    check_resumable(out, run, NEConfig(method=method, **topology))
                except ValueError as exc:
                    raise UsageError(str(exc)) from exc
            results = run_td3(run, NEConfig(method=method, **topology), out, resume=args.resume and not args.force,
                              show_progress=not args.quiet)
            print(f"{method} seed {run.seed}: final return {results['final_return']:.1f}, sparsity "
                  f"{results['final_sparsity']:.2f}, {results['training_seconds']:.0f} s -> {out}")


if __name__ == "__main__":
    run_main(main)
