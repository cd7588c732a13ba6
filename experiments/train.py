"""Train a learning agent on a target and produce its measured, exported pruned network."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from agents.callbacks import TopCandidatesCallback
from agents.heuristics import FixedWidths, InRounds
from agents.parallel import Parallelism
from agents.search import (
    SearchMonitor,
    action_mode_of,
    best_of,
    make_agent,
    reselect,
    restore_checkpoint,
    search,
)
from experiments.report import final_report, save_network, write_report
from prune_env.cli import UsageError
from prune_env.env import PruningEnv
from prune_env.evaluation import make_evaluation
from prune_env.export import export_all
from prune_env.files import write_json
from prune_env.rounds import ROUND_CRITERIA
from target_models import Target


@dataclass
class TrainRun:
    """One training run of an agent; fields mirror ``train_agent.py``'s flags."""

    target: Target
    """The target to prune (pretrained first if it has no checkpoint)."""
    agent: str
    """A name in :data:`agents.search.AGENTS` (``ppo``, ``reinforce``, ``reinforce_channels``, ``random_search``, ``evolution``)."""
    config: dict
    """Resolved configuration: ``env``, ``agent``, ``search``, ``evaluate`` sections."""
    out: Path
    """Run folder: report, config, checkpoints, TensorBoard logs, exports."""
    seed: int = 0
    """Seeds the agent and its episodes."""
    resume: bool = False
    """Continue the run saved in ``out``."""
    export: bool = True
    """Write TorchScript and ONNX files of the pruned network."""
    reference_reward: float | None = None
    """Record the first episode whose reward reaches this (e.g. the best heuristic's)."""
    show_progress: bool = True
    """Progress bars."""
    parallel: Parallelism = Parallelism()
    """Episode workers (``--workers``, ``--threads``, ``--ray``): same results, less time."""
    baselines: tuple[str, ...] = ("uniform", "l1", "ngf")
    """Single-shot heuristics played once each, with their own criterion, in the same
    environment settings: their rewards are printed beside the agent's best, and the best
    of them is the reference reward when none is given."""


def play_baselines(target: Target, env_config: dict, names: tuple[str, ...]) -> dict[str, dict]:
    """One episode of each heuristic in ``names`` (its own unit criterion); their records."""
    from agents import make_policy
    from agents.base import run_episode

    records = {}
    model = target.load_pretrained() if names else None  # loaded once, shared: no env edits it
    for name in names:
        env, policy, _ = make_policy(name, target, {**env_config, "model": model})
        records[name] = run_episode(env, policy, seed=0)
    return records


def format_comparison(agent: str, record: dict, baselines: dict[str, dict]) -> str:
    """The agent's best episode beside every baseline's, on the search's own reward."""
    rows = [(agent, record), *baselines.items()]
    best = max(baselines, key=lambda n: baselines[n]["reward"]) if baselines else None
    lines = [f"  {'policy':<15} {'reward':>8} {'metric (val)':>13} {'FLOPs ratio':>12}"]
    for name, r in rows:
        mark = "  <- best heuristic" if name == best else ""
        lines.append(f"  {name:<15} {r['reward']:8.4f} {r['metric_pruned_val']:13.4f} {r['flops_ratio']:12.3f}{mark}")
    return "search reward (validation, before fine-tuning):\n" + "\n".join(lines)


def refuse_changed_settings(saved_path: Path, resolved: dict) -> None:
    """A resumed run must keep the settings its saved episodes were measured with (only the
    episode count may grow)."""
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    changed = [f"{section}.{key}" for section in ("env", "agent") for key in
               set(saved.get(section) or {}) | set(resolved.get(section) or {})
               if (saved.get(section) or {}).get(key) != (resolved.get(section) or {}).get(key)]
    changed += [key for key in ("target", "agent_kind", "seed") if saved.get(key) != resolved.get(key)]
    if (saved.get("search") or {}).get("reselect_top", 0) != (resolved.get("search") or {}).get("reselect_top", 0):
        changed.append("search.reselect_top")  # its candidates are collected during the search
    saved_episodes = (saved.get("search") or {}).get("episodes")
    if saved_episodes is not None and int((resolved.get("search") or {}).get("episodes", 0)) < int(saved_episodes):
        raise UsageError(f"--resume with fewer --episodes than the run in {saved_path.parent} was started with "
                         f"({saved_episodes}): its saved episodes may already be beyond the new budget; resume "
                         "with at least as many, or start a new --out")
    if changed:
        raise UsageError(f"--resume with other settings than the run in {saved_path.parent} "
                         f"({', '.join(sorted(changed))}); resume with the same flags, or start a new --out")


def start_workers(parallel: Parallelism, agent: str, env: PruningEnv):
    """The episode workers of agent kind ``agent`` (None: serial)."""
    if agent == "ppo" and env.criterion == "random" and not parallel.serial:
        raise UsageError("ppo's episodes draw the random criterion's units from one running random stream, which "
                         "workers cannot share: run ppo with the random criterion (env.criterion: random) serially "
                         "(no --workers, no --ray)")
    return parallel.start(env)


def check_rounds(config: dict) -> None:
    """Refuse ``evaluate.rounds`` above 1 with a criterion rounds cannot re-measure (they
    re-rank units by ``l1`` or ``activation`` on the current network)."""
    if int(config["evaluate"].get("rounds", 1)) <= 1:
        return
    if config["env"].get("criterion") not in ROUND_CRITERIA:
        raise UsageError(f"--rounds re-measures the l1 or activation criterion, not {config['env'].get('criterion')!r}: "
                         "set env.criterion to l1 or activation (--config FILE), or pass --rounds 1")


def train_and_report(run: TrainRun) -> dict:
    """Search, keep the best network, fine-tune, measure on the test split, save, export."""
    target, out = run.target, Path(run.out)
    target.ensure_pretrained(show_progress=run.show_progress)
    budgeted = run.config["env"].get("flops_budget") or run.config["env"].get("latency_budget")
    baselines = play_baselines(target, run.config["env"], run.baselines) if budgeted else {}
    reference = run.reference_reward
    if reference is None and baselines:
        reference = max(r["reward"] for r in baselines.values())
    started = time.perf_counter()
    env = PruningEnv(target, **run.config["env"], action_mode=action_mode_of(run.agent))
    episodes = int(run.config["search"]["episodes"])
    top_k = int(run.config["search"].get("reselect_top", 0))
    top = [TopCandidatesCallback(top_k)] if top_k > 0 else []
    monitor = SearchMonitor(env, out / "tensorboard", total_episodes=episodes,
                            reference_reward=reference, show_progress=run.show_progress, callbacks=top)
    resolved = {**run.config, "target": target.name, "agent_kind": run.agent, "seed": run.seed,
                "checkpoint": str(target.checkpoint_path.resolve())}
    if run.resume:
        refuse_changed_settings(out / "config.json", resolved)
        agent = restore_checkpoint(run.agent, env, monitor, out / "checkpoint")
        print(f"resuming {out} at episode {monitor.episodes} of {episodes}")
    else:
        agent = make_agent(run.agent, env, run.config.get("agent"), seed=run.seed)
    write_json(out / "config.json", resolved)
    agent.workers = start_workers(run.parallel, run.agent, env)
    try:
        search(agent, env, monitor, episodes, out / "checkpoint")
    finally:
        monitor.close()
        if agent.workers is not None:
            agent.workers.close()
            agent.workers = None
    model, record = best_of(monitor, env, agent)
    reselection = None
    if top and top[0].records:
        held_out = target.evaluator("val", offset=env.val_size)  # validation examples the search never saw
        steps = int(run.config["search"].get("reselect_finetune_steps", 0))
        prepare = make_evaluation("finetune", target, finetune_steps=steps) if steps > 0 else None
        model, record, reselection = reselect(env, top[0].records, held_out, prepare)
        reselection = {"top": top_k, "offset": env.val_size, "finetune_steps": steps, **reselection}
    search_seconds = monitor.elapsed() if run.resume else time.perf_counter() - started
    searched = record
    rounds = int(run.config["evaluate"].get("rounds", 1))
    if rounds > 1:  # the best widths reached in rounds, the fine-tunes between them out of the one budget
        chosen = FixedWidths(env, searched["keep_counts"], searched.get("kept_units"))
        model, record = InRounds(env, chosen, seed=run.seed, rounds=rounds,
                                 finetune_budget=run.config["evaluate"]["finetune_epochs"]).run()

    report, finetuned = final_report(
        env, model, record, policy=run.agent, seed=run.seed, search_seconds=search_seconds,
        episodes=monitor.counted_episodes, finetune_epochs=run.config["evaluate"]["finetune_epochs"],
        latency_batch_size=run.config["evaluate"]["latency_batch_size"], show_progress=run.show_progress)
    episode = searched.get("episode")
    report["best_episode"] = episode if isinstance(episode, int) else None  # None: no episode was played
    report["policy_mode"] = "best_episode" if isinstance(episode, int) else "deterministic"
    report["episodes_played"] = monitor.episodes
    report["first_beats_reference"] = monitor.first_beat
    report["best_reward"] = searched["reward"]
    report["reselection"] = reselection
    report["agent_start"] = getattr(agent, "start", None)
    report["baselines"] = {name: {k: r[k] for k in ("reward", "metric_pruned_val", "flops_ratio", "keep_ratios")}
                           for name, r in baselines.items()}
    if baselines:
        print(format_comparison(run.agent, searched, baselines))
    save_network(out, env, finetuned, report)
    if run.export:
        measured = {report["latency_batch_size"]: {"base": report["latency_ms_base"],
                                                   "pruned": report["latency_ms_pruned"]}}
        report["export"] = export_all(finetuned, env.model, target, out, measured=measured)
    write_report(out, report, resolved)
    return report
