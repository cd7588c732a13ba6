"""Learned policies against heuristics: run everything at several budgets and seeds,
aggregate to tables and draw the Pareto plot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agents import HEURISTICS, make_heuristic
from agents.base import prune_with
from agents.heuristics import in_rounds
from agents.parallel import Parallelism, RunTasks
from experiments.report import BaselineMeasurements, final_report, write_report
from experiments.train import TrainRun, train_and_report
from prune_env.cli import UsageError
from prune_env.env import PruningEnv
from target_models import Target

HEURISTIC_NAMES = ("uniform", "l1", "ngf", "ngf_scheduled", "random")
RESULT_COLUMNS = (
    "policy", "flops_budget", "seeds", "metric_pruned_mean", "metric_pruned_std", "metric_finetuned_mean",
    "metric_finetuned_std", "flops_ratio", "params_ratio", "latency_ratio", "search_seconds", "episodes",
    "first_beat_episode", "first_beat_seconds", "rounds",
)


def run_folder(out: Path, policy: str, budget: float, seed: int) -> Path:
    """Where one run of a comparison keeps its ``report.json`` (and an agent its checkpoints)."""
    return Path(out) / "runs" / f"{policy}-b{budget}-s{seed}"


RESUME_SETTINGS = (("env", "evaluation"), ("env", "val_size"), ("env", "bn_calibration_size"),
                   ("env", "finetune_steps"), ("env", "criterion"), ("env", "min_keep"), ("env", "round_to"),
                   ("env", "budget_tolerance"), ("env", "reward"), ("evaluate", "finetune_epochs"), ("evaluate", "rounds"))
"""Settings a finished run of a comparison must share with the comparison that reuses it."""
RESUME_DEFAULTS = {("evaluate", "rounds"): 1, ("env", "budget_tolerance"): 0.0}
"""Settings a finished run's config may predate, with the value it ran at (single-shot, exact landing)."""


def finished_report(folder: Path, config: dict, agent: bool = False) -> dict | None:
    """The report of a finished run, None when it has none yet; a UsageError when it was made
    with other settings than ``config`` (and, for an agent, another episode budget): a
    resumed comparison never mixes budgets or fine-tunes."""
    path = folder / "report.json"
    if not path.is_file():
        return None
    saved_path = folder / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    keys = RESUME_SETTINGS + ((("search", "episodes"),) if agent else ())
    for section, key in keys:
        default = RESUME_DEFAULTS.get((section, key))
        old = (saved.get(section) or {}).get(key, default) if saved else None
        new = (config.get(section) or {}).get(key, default)
        if old is not None and new is not None and old != new:
            raise UsageError(f"--resume: {folder} was run with {section}.{key} = {old}, this comparison uses "
                             f"{new}; resume with the same flags, or give a new --out")
    return json.loads(path.read_text())


def run_heuristics(target: Target, config: dict, budget: float, seeds: list[int],
                   names: tuple[str, ...] = HEURISTIC_NAMES, show_progress: bool = False,
                   out: Path | None = None, resume: bool = False) -> list[dict]:
    """Reports of every heuristic at one budget for every seed (one environment per criterion).
    With ``out`` each run's report is written to its :func:`run_folder` as it finishes, and
    with ``resume`` a run whose report is there is read back instead of run again."""
    envs: dict[str, PruningEnv] = {}
    baselines: dict[str, BaselineMeasurements] = {}  # the unpruned network measured once per environment
    reports = []
    for name in names:
        criterion = HEURISTICS[name].preferred_criterion or config["env"].get("criterion", "l1")
        for seed in seeds:
            folder = None if out is None else run_folder(out, name, budget, seed)
            report = finished_report(folder, config) if resume and folder is not None else None
            if report is None:
                if criterion not in envs:
                    envs[criterion] = PruningEnv(target, **{**config["env"], "flops_budget": budget,
                                                            "criterion": criterion})
                    baselines[criterion] = BaselineMeasurements(envs[criterion])
                env = envs[criterion]
                started = time.perf_counter()
                budget_epochs = config["evaluate"]["finetune_epochs"]
                policy = in_rounds(env, make_heuristic(name, env, seed=seed, finetune_budget=budget_epochs),
                                   config["evaluate"].get("rounds", 1), seed=seed, finetune_budget=budget_epochs)
                model, record, episodes = prune_with(env, policy, seed)
                report, _ = final_report(env, model, record, policy=name, seed=seed,
                                         search_seconds=time.perf_counter() - started, episodes=episodes,
                                         finetune_epochs=config["evaluate"]["finetune_epochs"],
                                         latency_batch_size=config["evaluate"]["latency_batch_size"],
                                         show_progress=show_progress, baseline=baselines[criterion])
                if folder is not None:
                    write_report(folder, report, {**config, "target": target.name, "policy": name, "seed": seed})
            reports.append(report)
            print(f"  {name:14s} budget {budget} seed {seed}: {report['metric_name']} "
                  f"{report['metric_pruned']:.4f} -> {report['metric_finetuned']:.4f} after fine-tuning")
    return reports


def run_agent(target: Target, config: dict, kind: str, budget: float, seed: int, out: Path,
              reference: float | None, resume: bool = False, show_progress: bool = False) -> dict:
    """One trained agent of a comparison, in its :func:`run_folder`; with ``resume`` a finished
    run is read back and an interrupted one continues from its checkpoint."""
    folder = run_folder(out, kind, budget, seed)
    report = finished_report(folder, config, agent=True) if resume else None
    if report is None:
        run_config = {**config, "env": {**config["env"], "flops_budget": budget}}
        report = train_and_report(TrainRun(
            target=target, agent=kind, config=run_config, out=folder, seed=seed, export=False,
            resume=resume and (folder / "checkpoint" / "search_state.pt").is_file(),
            reference_reward=reference, show_progress=show_progress))
    print(f"  {kind:14s} budget {budget} seed {seed}: {report['metric_pruned']:.4f} -> "
          f"{report['metric_finetuned']:.4f} ({report['episodes']} episodes, {report['search_seconds']:.0f} s)")
    return report


def compare(target: Target, config: dict, budgets: list[float], seeds: list[int], out: Path,
            heuristics: tuple[str, ...] = HEURISTIC_NAMES, train_agents: tuple[str, ...] = (),
            agent_configs: dict[str, dict] | None = None, agent_budgets: list[float] | None = None,
            runs: list[Path] = (), show_progress: bool = False, resume: bool = False,
            parallel: Parallelism | None = None) -> pd.DataFrame:
    """Every heuristic (and learned agent) at every budget and seed; writes each run's report
    under ``out/runs/``, then runs.csv, results.csv, results.md and pareto.png under ``out``;
    returns the per-run table. Agents are trained at ``agent_budgets`` (default: every
    budget). ``resume`` skips finished runs. With ``parallel`` using Ray, the runs are Ray
    tasks (heuristics: one task per budget and unit criterion; agents: one per budget and
    seed), each reserving ``parallel.threads`` CPUs (default 1): the same reports and tables."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = RunTasks(parallel or Parallelism())
    groups: dict[float, list] = {}
    for budget in budgets:
        by_criterion: dict[str, list[str]] = {}
        for name in heuristics:
            criterion = HEURISTICS[name].preferred_criterion or config["env"].get("criterion", "l1")
            by_criterion.setdefault(criterion, []).append(name)
        groups[budget] = [tasks.submit(run_heuristics, target, config, budget, seeds, tuple(names), show_progress,
                                       out, resume) for names in by_criterion.values()]
    heuristic_reports = {budget: [r for group in tasks.gather(refs) for r in group] for budget, refs in groups.items()}
    agent_refs: dict[float, list] = {}
    for budget in budgets:
        print(f"{target.name} at {budget:.0%} of the FLOPs")
        reference = max((r.get("reward", r.get("val_reward")) for r in heuristic_reports[budget]),
                        default=None)  # val_reward: reports written before 2026-11-30
        agent_refs[budget] = [
            tasks.submit(run_agent, target, (agent_configs or {}).get(kind, config), kind, budget, seed, out,
                         reference, resume, show_progress)
            for kind in (train_agents if agent_budgets is None or budget in agent_budgets else ()) for seed in seeds]
    rows: list[dict] = []
    for budget in budgets:
        rows += sorted(heuristic_reports[budget], key=lambda r: (heuristics.index(r["policy"]), r["seed"]))
        rows += tasks.gather(agent_refs[budget])
    for run in runs:
        rows.append(json.loads((Path(run) / "report.json").read_text()))
    table = pd.DataFrame(rows)
    table.drop(columns=[c for c in ("export",) if c in table], errors="ignore").to_csv(out / "runs.csv", index=False)
    results = aggregate(table)
    results.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(to_markdown(results, table))
    plot_pareto(results, table, out / "pareto.png")
    return table


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """One row per policy and budget: means and standard deviations over seeds."""
    t = table.copy()
    t["flops_ratio"] = t["flops_pruned"] / t["flops_base"]
    t["params_ratio"] = t["params_pruned"] / t["params_base"]
    t["latency_ratio"] = t["latency_ms_pruned"] / t["latency_ms_base"]
    beats = t["first_beats_reference"] if "first_beats_reference" in t else pd.Series([None] * len(t))
    t["first_beat_episode"] = [b["episode"] if isinstance(b, dict) else np.nan for b in beats]
    t["first_beat_seconds"] = [b["seconds"] if isinstance(b, dict) else np.nan for b in beats]
    t["rounds"] = t["rounds"].fillna(1).astype(int) if "rounds" in t else 1  # reports made before rounds: single-shot
    grouped = t.groupby(["policy", "flops_budget"], sort=False)
    result = grouped.agg(
        seeds=("seed", "count"), metric_pruned_mean=("metric_pruned", "mean"),
        metric_pruned_std=("metric_pruned", "std"), metric_finetuned_mean=("metric_finetuned", "mean"),
        metric_finetuned_std=("metric_finetuned", "std"), flops_ratio=("flops_ratio", "mean"),
        params_ratio=("params_ratio", "mean"), latency_ratio=("latency_ratio", "mean"),
        search_seconds=("search_seconds", "mean"), episodes=("episodes", "mean"),
        first_beat_episode=("first_beat_episode", "mean"), first_beat_seconds=("first_beat_seconds", "mean"),
        rounds=("rounds", "max"),
    ).reset_index()
    return result[list(RESULT_COLUMNS)]


def to_markdown(results: pd.DataFrame, table: pd.DataFrame) -> str:
    """The results table with ``mean ± std`` cells, headed by the unpruned baseline."""
    digits = 1 if table["metric_name"].iloc[0] == "mean_return" else 4

    def pm(mean: float, std: float) -> str:
        if np.isnan(std):  # a single seed has no spread
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    shown = pd.DataFrame({
        "policy": results["policy"], "FLOPs budget": results["flops_budget"], "seeds": results["seeds"],
        "metric before FT": [pm(m, s) for m, s in zip(results["metric_pruned_mean"], results["metric_pruned_std"], strict=True)],
        "metric after FT": [pm(m, s) for m, s in zip(results["metric_finetuned_mean"], results["metric_finetuned_std"], strict=True)],
        "FLOPs ratio": results["flops_ratio"].round(3), "params ratio": results["params_ratio"].round(3),
        "latency ratio": results["latency_ratio"].round(3), "search s": results["search_seconds"].round(1),
        "episodes": results["episodes"].round(1), "rounds": results["rounds"],
    })
    base = table["metric_base"].mean()
    header = (f"Target `{table['target'].iloc[0]}`, metric `{table['metric_name'].iloc[0]}` on the test split; "
              f"unpruned: {base:.{digits}f}. Latency at batch {int(table['latency_batch_size'].iloc[0])}.\n\n")
    return header + shown.to_markdown(index=False) + "\n"


def plot_pareto(results: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """The metric before and after fine-tuning (two panels) against the FLOPs ratio, a line
    per policy and the unpruned point. Policies are shifted apart a little along the x axis,
    with their own markers, so that equal results do not hide each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>Ph*X"
    policies = list(dict.fromkeys(results["policy"]))
    spread = 0.004 * max(1, len(policies) - 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for ax, stage, title in ((axes[0], "metric_pruned", "before fine-tuning"),
                             (axes[1], "metric_finetuned", "after fine-tuning")):
        for k, policy in enumerate(policies):
            rows = results[results["policy"] == policy].sort_values("flops_ratio")
            shift = (k / max(1, len(policies) - 1) - 0.5) * spread if len(policies) > 1 else 0.0
            ax.errorbar(rows["flops_ratio"] + shift, rows[f"{stage}_mean"], yerr=rows[f"{stage}_std"].fillna(0.0),
                        marker=markers[k % len(markers)], capsize=3, alpha=0.85, label=policy)
        ax.scatter([1.0], [table["metric_base"].mean()], marker="*", s=160, color="black", label="unpruned", zorder=5)
        ax.set_xlabel("FLOPs ratio (pruned / unpruned)")
        ax.set_ylabel(f"{table['metric_name'].iloc[0]} (test)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{table['target'].iloc[0]}: metric against FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
