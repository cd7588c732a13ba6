"""Learn a pruning policy for a target, then fine-tune, measure and export the best network.

    python scripts/train_agent.py --target vgg16_cifar10 [--agent ppo|reinforce] [--flops-budget B]
        [--reward R] [--episodes N] [--seed S] [--config FILE] [--out runs/NAME] [--resume]

Pretrains the target first when it has no checkpoint. Logs to TensorBoard under
OUT/tensorboard, checkpoints the agent under OUT/checkpoint (``--resume`` continues from
there), and writes OUT/report.json, OUT/config.json, OUT/pruned_model.pt and the exports.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from agents.search import SearchMonitor, best_of, make_agent, restore_checkpoint, search
from prune_env.cli import UsageError, add_target_arguments, run_main, target_from_args, write_json
from prune_env.config import load_config
from prune_env.env import PruningEnv
from prune_env.export import export_all, save_pruned
from prune_env.report import final_report, format_report, write_report
from prune_env.surgery import widths_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--agent", default="ppo", choices=["ppo", "reinforce"])
    parser.add_argument("--flops-budget", type=float, default=None)
    parser.add_argument("--reward", default=None, choices=["budget", "tradeoff", "log_flops"])
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None, help="a YAML file overriding configs/")
    parser.add_argument("--out", default=None, help="run folder (default runs/<target>-<agent>-s<seed>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--finetune-epochs", type=float, default=None)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.resume and not args.out:
        raise UsageError("--resume needs the --out folder of the run to continue")
    config = load_config(args.target, args.agent, args.config, overrides={
        "env": {"flops_budget": args.flops_budget, "reward": args.reward},
        "search": {"episodes": args.episodes}, "evaluate": {"finetune_epochs": args.finetune_epochs},
    })
    if config["env"].get("reward") != "budget" and args.flops_budget is None:
        config["env"]["flops_budget"] = None
    out = Path(args.out or f"runs/{args.target}-{args.agent}-s{args.seed}-{datetime.now():%Y%m%d-%H%M%S}")
    target = target_from_args(args)

    if not target.has_checkpoint():
        print(f"{target.name} has no pretrained checkpoint yet ({target.checkpoint_path}); pretraining it first.")
        target.pretrain(show_progress=not args.quiet)

    started = time.perf_counter()
    env = PruningEnv(target, **config["env"])
    episodes = int(config["search"]["episodes"])
    monitor = SearchMonitor(env, out / "tensorboard", total_episodes=episodes, show_progress=not args.quiet)
    if args.resume:
        agent = restore_checkpoint(args.agent, env, monitor, out / "checkpoint", target.build_model)
        print(f"resuming {out} at episode {monitor.episodes} of {episodes}")
    else:
        agent = make_agent(args.agent, env, config.get("agent"), seed=args.seed)
    write_json(out / "config.json", {**config, "target": target.name, "agent": args.agent, "seed": args.seed})
    search(agent, env, monitor, episodes, out / "checkpoint")
    monitor.close()
    model, record = best_of(monitor, env, agent)
    search_seconds = monitor.elapsed() if args.resume else time.perf_counter() - started

    report, finetuned = final_report(
        env, model, record, policy=args.agent, seed=args.seed, search_seconds=search_seconds,
        episodes=monitor.episodes, finetune_epochs=config["evaluate"]["finetune_epochs"],
        latency_batch_size=config["evaluate"]["latency_batch_size"], show_progress=not args.quiet)
    report["best_episode"] = record.get("episode")
    save_pruned(out / "pruned_model.pt", finetuned, target, widths_of(finetuned, env.layers),
                meta={"keep_ratios": report["keep_ratios"], "metric_finetuned": report["metric_finetuned"]})
    if not args.no_export:
        report["export"] = export_all(finetuned, env.model, target, out)
    write_report(out, report, {**config, "target": target.name, "agent": args.agent, "seed": args.seed})
    print(format_report(report))
    print(f"wrote {out / 'report.json'}")


if __name__ == "__main__":
    run_main(main)
