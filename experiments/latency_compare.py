"""Latency-aware against FLOPs-aware pruning at one measured-latency target (issue 14).

For every batch size, latency budget and seed, five networks, each in its own run folder:

- ``uniform``: one keep-ratio for every layer, fitted to the latency budget by the table;
- ``flops_search``: the searcher at the FLOPs budget the ``uniform`` network needed (the
  FLOPs that meet the latency target when every layer is cut alike);
- ``flops_search_matched``: the searcher at that FLOPs budget rescaled by the latency budget
  over ``flops_search``'s predicted latency ratio (a proportional correction), so that the
  FLOPs-aware search lands near the latency target too and the two compare at equal latency;
- ``latency_search``: the same searcher at the latency budget;
- ``latency_search_rN``: the latency search with ``round_to=N``.

Each is fine-tuned with the target's standard fine-tune and measured on the test split. A
folder with a ``report.json`` is done and skipped, so an interrupted run resumes. Then the
unpruned network and every pruned one are timed, interleaved over several rounds in one
process, in PyTorch and in onnxruntime (:func:`time_networks`). Each invocation is one timing
*session*, appended to ``timings.csv`` (:func:`record_session`); the summary takes each
network's median over the sessions (:func:`over_sessions`): at batch 1, VGG16's ratios moved by
up to 0.15 from one process to the next, minutes apart (BENCHMARKS.md), so one session cannot
show a network landing within 5% of its budget.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agents import make_heuristic
from agents.base import prune_with
from experiments.report import final_report, save_network, write_report
from experiments.train import TrainRun, train_and_report
from prune_env.cost import forward_call, onnx_call, over_rounds, time_alternating
from prune_env.env import PruningEnv, lowest_flops_ratio
from prune_env.export import export_onnx, load_pruned
from target_models import Target
from target_models.device import torch_threads

TIMING_REPEATS = 20
"""Alternating runs of every network per timing round."""
DRIFT_WARNING = 0.10
"""How far the unpruned network's timing may move from its table's before :func:`host_drift` warns."""

ARMS = ("uniform", "flops_search", "flops_search_matched", "latency_search", "latency_search_round")


def arm_name(arm: str, round_to: int) -> str:
    return f"latency_search_r{round_to}" if arm == "latency_search_round" else arm


def arm_env(config: dict, arm: str, budget: float, batch: int, flops_budget: float | None, round_to: int) -> dict:
    """The env section of one arm: a latency budget at ``batch``, or (``flops_search``) the
    FLOPs budget ``flops_budget``."""
    env = {**config["env"], "latency_batch_size": batch, "round_to": None}
    if arm.startswith("flops_search"):
        return {**env, "flops_budget": flops_budget, "latency_budget": None}
    env.update(flops_budget=None, latency_budget=budget)
    if arm == "latency_search_round":
        env["round_to"] = round_to
    return env


def latency_table(target: Target, batch: int, env_config: dict, round_to: int | None = None):
    """The target's (cached) latency table at ``batch``, on the grid and with the timing
    settings (``latency_engine``, ``latency_statistic``, ``latency_table_rounds``, ``latency_threads``) of a
    ``PruningEnv`` built from ``env_config`` with ``round_to``, so that both read the same table."""
    from prune_env.env import allowed_counts
    from prune_env.latency import LatencyTable
    from prune_env.pruner import make_pruner
    from prune_env.surgery import keep_count

    pruner = make_pruner(target.build_model().eval(), target.example_input(), keep_layers=target.keep_layers)
    min_keep = env_config["min_keep"]
    low = [int(allowed_counts(int(u), keep_count(min_keep, int(u)), round_to)[0]) for u in pruner.units]
    return LatencyTable.build(pruner, target.name, batch, env_config.get("latency_engine", "torch"), target.device,
                              low=low, statistic=env_config.get("latency_statistic", "median"),
                              rounds=env_config.get("latency_table_rounds", 1), round_to=round_to,
                              threads=env_config.get("latency_threads"))


def lowest_latency_ratio(target: Target, batch: int, env_config: dict, round_to: int | None = None) -> float:
    """The smallest latency budget ``env_config``'s ``min_keep`` (and ``round_to``) allow at
    ``batch``: the table's grids start at the lowest allowed count of each layer."""
    table = latency_table(target, batch, env_config, round_to)
    return table.predict([int(g[0]) for g in table.grids]) / table.base


def run_uniform(target: Target, config: dict, out: Path, seed: int, show_progress: bool) -> dict:
    """The uniform heuristic at the arm's budget, fine-tuned, measured and saved like a search run."""
    env = PruningEnv(target, **config["env"])
    started = time.perf_counter()
    model, record, episodes = prune_with(env, make_heuristic("uniform", env, seed=seed), seed)
    report, finetuned = final_report(env, model, record, policy="uniform", seed=seed,
                                     search_seconds=time.perf_counter() - started, episodes=episodes,
                                     finetune_epochs=config["evaluate"]["finetune_epochs"],
                                     latency_batch_size=config["evaluate"]["latency_batch_size"],
                                     show_progress=show_progress)
    save_network(out, env, finetuned, report)
    write_report(out, report, {**config, "target": target.name, "seed": seed})
    return report


def run_arms(target: Target, config: dict, agent: str, budgets: list[float], batches: list[int], seeds: list[int],
             out: Path, round_to: int = 8, show_progress: bool = False) -> list[dict]:
    """Every arm at every batch size, budget and seed (finished run folders are kept as they
    are); returns one entry per run (``folder``, ``arm``, ``batch``, ``budget``). ``config``
    is the agent's resolved configuration."""
    runs = []
    for batch in batches:
        for budget in budgets:
            for seed in seeds:
                flops_budget = None
                for arm in ARMS:
                    name = arm_name(arm, round_to)
                    folder = out / f"batch{batch}" / f"latency{budget}" / f"{name}-s{seed}"
                    runs.append({"folder": folder, "arm": name, "batch": batch, "budget": budget})
                    run_config = {**config, "env": arm_env(config, arm, budget, batch, flops_budget, round_to),
                                  "evaluate": {**config["evaluate"], "latency_batch_size": batch}}
                    if (folder / "report.json").is_file():
                        report = json.loads((folder / "report.json").read_text())
                    else:
                        folder.mkdir(parents=True, exist_ok=True)
                        print(f"{target.name} batch {batch}, latency budget {budget}, seed {seed}: {name}")
                        if arm == "uniform":
                            report = run_uniform(target, run_config, folder, seed, show_progress)
                        else:
                            report = train_and_report(TrainRun(target=target, agent=agent, config=run_config,
                                                               out=folder, seed=seed, export=False, baselines=(),
                                                               show_progress=show_progress))
                        print(f"  test {report['metric_finetuned']:.4f} after fine-tuning, FLOPs ratio "
                              f"{report['flops_ratio']:.3f}")
                    if arm == "uniform":
                        flops_budget = float(report["flops_ratio"])
                    elif arm.startswith("flops_search"):  # its latency, as the table predicts it
                        table = latency_table(target, batch, config["env"])
                        predicted = table.predict(report["keep_counts"]) / table.base
                        runs[-1]["predicted_ratio"] = predicted
                        if arm == "flops_search":  # rescaled towards the latency target
                            lowest = lowest_flops_ratio(target, config["env"]["min_keep"]) * 1.001
                            flops_budget = float(np.clip(flops_budget * budget / predicted, lowest, 1.0))
    return runs


def time_networks(target: Target, runs: list[dict], rounds: int = 5, repeats: int = TIMING_REPEATS,
                  statistic: str = "median", threads: int | None = None) -> pd.DataFrame:
    """Measured latency (ms) of the unpruned network and of every run's pruned network at the
    run's batch size, in PyTorch (eager) and onnxruntime: the ``statistic`` (``median`` or
    ``min``; give the one the latency table was timed with) of ``rounds * repeats`` single
    runs, alternating (every network and engine once per pass, in a random order:
    :func:`prune_env.cost.time_alternating`), so that drift of the machine hits every network
    alike. ``threads``: torch's (and onnxruntime's) thread count while timing (default: the
    process's). One row per run."""
    base = target.load_pretrained().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch_threads(threads) as in_force:
        for batch in sorted({run["batch"] for run in runs}):
            x = target.example_input(batch)
            batch_runs = [run for run in runs if run["batch"] == batch]
            models = [base, *(load_pruned(run["folder"] / "pruned_model.pt", target) for run in batch_runs)]
            paths = [Path(tmp) / f"{batch}-{i}.onnx" for i in range(len(models))]
            for model, path in zip(models, paths, strict=True):
                export_onnx(model, target.example_input(2), path)
            calls = [call for model, path in zip(models, paths, strict=True)
                     for call in (forward_call(model.to(target.device), x, target.device), onnx_call(path, x))]
            ms = over_rounds(time_alternating(calls, rounds * repeats), statistic).reshape(len(models), 2)
            for i, run in enumerate(batch_runs, start=1):
                report = json.loads((run["folder"] / "report.json").read_text())
                row = {"batch": batch, "latency_budget": run["budget"], "policy": run["arm"], "seed": report["seed"],
                       "metric_pruned": report["metric_pruned"], "metric_finetuned": report["metric_finetuned"],
                       "flops_ratio": report["flops_ratio"],
                       "predicted_ratio": run.get("predicted_ratio", report.get("latency_ratio_predicted")),
                       "keep_counts": report["keep_counts"], "timing_statistic": statistic, "threads": in_force}
                for j, engine in enumerate(("torch", "onnxruntime")):
                    row[f"{engine}_base_ms"] = round(float(ms[0, j]), 3)
                    row[f"{engine}_ms"] = round(float(ms[i, j]), 3)
                    row[f"{engine}_ratio"] = round(float(ms[i, j] / ms[0, j]), 4)
                rows.append(row)
    return pd.DataFrame(rows)


def host_drift(target: Target, batches: list[int], env_config: dict, timings: pd.DataFrame) -> list[str]:
    """One line per batch size: the unpruned network's PyTorch latency in ``timings``
    (:func:`time_networks`) against its latency when the table was timed (the table's
    ``base``, calibrated on that whole-network timing). A table's fractions hold at the host
    speed it was timed at: tables timed in slow spells under-predicted every pruned VGG16 by
    6-30% (BENCHMARKS.md), so beyond :data:`DRIFT_WARNING` the line says the landing check
    is not to be trusted."""
    lines = []
    for batch in batches:
        built = latency_table(target, batch, env_config).base
        now = float(timings.loc[timings["batch"] == batch, "torch_base_ms"].iloc[0])
        drift = now / built - 1
        warning = "" if abs(drift) <= DRIFT_WARNING else (
            ": the host ran at another speed than when the table was timed, so the measured ratios need not match "
            "the budgets; rebuild the tables in a quiet hour (a fresh PRUNE_ENV_HOME) to check the landing")
        lines.append(f"batch {batch}: unpruned {now:.2f} ms now, {built:.2f} ms when its table was timed "
                     f"({drift:+.1%}){warning}")
    return lines


def record_session(out: Path, timings: pd.DataFrame, session: str) -> pd.DataFrame:
    """Append one session's :func:`time_networks` rows, labelled ``session``, to
    ``out/timings.csv``; returns every session recorded there."""
    path = out / "timings.csv"
    history = pd.read_csv(path) if path.is_file() else None
    frames = [frame for frame in (history, timings.assign(session=session)) if frame is not None]
    history = pd.concat(frames, ignore_index=True)
    history.to_csv(path, index=False)
    return history


def over_sessions(history: pd.DataFrame) -> pd.DataFrame:
    """One row per network: its median latencies and ratios over the timing sessions of
    ``history`` (:func:`record_session`), with ``sessions`` (how many) and
    ``torch_ratio_low``/``_high`` (the range of its PyTorch ratio over them)."""
    keys = ["batch", "latency_budget", "policy", "seed"]
    timed = [c for c in history.columns if c.endswith(("_ms", "_ratio")) and c != "predicted_ratio"]
    grouped = history.groupby(keys, sort=False)
    rows = grouped.first().drop(columns=[*timed, "session"])
    rows[timed] = grouped[timed].median()
    rows["sessions"] = grouped["session"].nunique()
    rows["torch_ratio_low"], rows["torch_ratio_high"] = grouped["torch_ratio"].min(), grouped["torch_ratio"].max()
    return rows.reset_index()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per batch size, budget and arm; ``within_5pct`` counts the runs whose
    measured PyTorch latency lies within 5% of the budget."""
    t = table.copy()
    t["within_5pct"] = (t["torch_ratio"] / t["latency_budget"] - 1).abs() <= 0.05
    grouped = t.groupby(["batch", "latency_budget", "policy"], sort=False)
    sessions = {"sessions": ("sessions", "min")} if "sessions" in t else {}
    result = grouped.agg(seeds=("seed", "count"), **sessions, metric_finetuned=("metric_finetuned", "mean"),
                         metric_finetuned_std=("metric_finetuned", "std"), flops_ratio=("flops_ratio", "mean"),
                         predicted_ratio=("predicted_ratio", "mean"), torch_ratio=("torch_ratio", "mean"),
                         onnxruntime_ratio=("onnxruntime_ratio", "mean"), within_5pct=("within_5pct", "sum"))
    result = result.reset_index()
    result["torch_speedup"] = (1 / result["torch_ratio"]).round(2)
    result["onnxruntime_speedup"] = (1 / result["onnxruntime_ratio"]).round(2)
    return result.round(4)
