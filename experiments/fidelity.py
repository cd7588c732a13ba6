"""Reward fidelity: does an evaluation mode rank candidates the way fine-tuning does?

For a set of candidate allocations at one FLOPs budget (random ones that meet it, plus
every single-shot heuristic's), each candidate is pruned once, measured on the validation
slice with every evaluation mode, and fine-tuned with the standard fine-tune and measured
on the test split. Kendall's tau and Spearman's rho of each mode's scores against the
fine-tuned metric say how well that mode predicts what a user finally gets.
Rows are appended to ``candidates.jsonl`` as they are measured, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.base import run_episode
from agents.heuristics import HEURISTICS, make_heuristic
from prune_env.cli import UsageError
from prune_env.env import PruningEnv
from prune_env.evaluation import EVALUATIONS, make_evaluation
from prune_env.files import append_jsonl, write_json, write_jsonl
from prune_env.ranking import kendall_tau, spearman_rho
from target_models import Target

SINGLE_SHOT = ("uniform", "l1", "ngf")


@dataclass(frozen=True)
class Candidate:
    """An allocation to measure: unit counts per layer and the criterion choosing units."""

    name: str
    criterion: str
    keep_counts: tuple[int, ...]


def make_candidates(env_for, n_random: int, seed: int = 0, criteria: tuple[str, ...] = ()) -> list[Candidate]:
    """Every single-shot heuristic's allocation and ``n_random`` random ones meeting the
    budget (``env_for(criterion)`` gives a plain environment for a criterion). Each random
    allocation is built once with the default criterion (``random-k``) and once with each
    other one of ``criteria`` (``random-k/criterion``): the same widths, other units."""
    out = []
    for name in SINGLE_SHOT:
        env = env_for(HEURISTICS[name].preferred_criterion)
        record = run_episode(env, make_heuristic(name, env, seed=seed))
        out.append(Candidate(name, env.criterion, tuple(record["keep_counts"])))
    env = env_for(None)
    for k in range(n_random):
        record = run_episode(env, make_heuristic("random", env, seed=seed * 100_003 + k))
        counts = tuple(record["keep_counts"])
        out.append(Candidate(f"random-{k}", env.criterion, counts))
        out += [Candidate(f"random-{k}/{c}", c, counts) for c in criteria if c != env.criterion]
    return out


def compare_criteria(rows: list[dict]) -> dict:
    """Per criterion, over the random allocations built with every criterion: the mean
    fine-tuned test metric and how often it was the best of the criteria."""
    by_allocation: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["candidate"].startswith("random-"):
            by_allocation.setdefault(r["candidate"].split("/")[0], {})[r["criterion"]] = r["metric_finetuned_test"]
    criteria = sorted({c for a in by_allocation.values() for c in a})
    paired = [a for a in by_allocation.values() if len(a) == len(criteria)]
    if len(criteria) < 2 or not paired:
        return {}
    return {c: {"allocations": len(paired), "mean_metric_finetuned_test": float(np.mean([a[c] for a in paired])),
                "best_on": sum(max(a, key=a.get) == c for a in paired)} for c in criteria}


def score_modes(env: PruningEnv, model: torch.nn.Module, modes: dict) -> dict:
    """Each mode's validation score of a copy of ``model`` it prepared, and its seconds."""
    scores = {}
    for name, mode in modes.items():
        started = time.perf_counter()
        prepared = copy.deepcopy(model)
        mode.prepare(prepared)
        scores[f"score_{name}"] = env.validation_metric(prepared)
        scores[f"seconds_{name}"] = time.perf_counter() - started
    return scores


def measure_candidate(env: PruningEnv, candidate: Candidate, modes: dict, finetune_epochs: float,
                      evaluate_test, seed: int = 0) -> dict:
    """One row: every mode's validation score and seconds, and the fine-tuned test metric."""
    target = env.target
    model = env.pruner.prune_counts(np.array(candidate.keep_counts), candidate.criterion)
    row = {"candidate": candidate.name, "criterion": candidate.criterion,
           "keep_counts": list(candidate.keep_counts),
           "flops_ratio": env.flop_model.flops(np.array(candidate.keep_counts)) / env.flops_base}
    row.update(score_modes(env, model, modes))
    started = time.perf_counter()
    tuned = copy.deepcopy(model)
    with torch.random.fork_rng():  # dropout: the same ground truth however many ran before
        torch.manual_seed(seed)
        target.finetune(tuned, epochs=finetune_epochs, seed=seed)
    row["metric_finetuned_test"] = evaluate_test(tuned)
    row["seconds_ground_truth"] = time.perf_counter() - started
    return row


def read_rows(path: Path) -> list[dict]:
    """The rows measured so far; a last line cut short by an interruption is dropped."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def summarise(rows: list[dict], modes: list[str]) -> dict:
    """Kendall tau, Spearman rho and mean seconds per candidate of each mode."""
    truth = [r["metric_finetuned_test"] for r in rows]
    return {name: {"kendall_tau": kendall_tau([r[f"score_{name}"] for r in rows], truth),
                   "spearman_rho": spearman_rho([r[f"score_{name}"] for r in rows], truth),
                   "seconds_per_candidate": float(np.mean([r[f"seconds_{name}"] for r in rows]))}
            for name in modes}


def proxy_fidelity(target: Target, env_config: dict, budget: float, n_random: int, out: Path,
                   finetune_epochs: float, modes: tuple[str, ...] = tuple(EVALUATIONS), seed: int = 0,
                   show_progress: bool = True, criteria: tuple[str, ...] = ()) -> dict:
    """Measure every candidate (resuming from ``out/candidates.jsonl``); write
    ``out/fidelity.json`` and ``out/candidates.csv``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    base_config = {**env_config, "flops_budget": budget, "evaluation": "plain", "cache": False}
    envs: dict[str, PruningEnv] = {}

    def env_for(criterion: str | None) -> PruningEnv:
        criterion = criterion or env_config.get("criterion", "l1")
        if criterion not in envs:
            envs[criterion] = PruningEnv(target, **{**base_config, "criterion": criterion})
        return envs[criterion]

    candidates = make_candidates(env_for, n_random, seed, criteria)
    env = env_for(None)
    settings = {"bn_calibration_size": env_config.get("bn_calibration_size", 1024),
                "finetune_steps": env_config.get("finetune_steps", 20)}
    built = {name: make_evaluation(name, target, **settings) for name in modes}
    run_settings = {"target": target.name, "flops_budget": budget, "seed": seed, "finetune_epochs": finetune_epochs,
                    "criterion": env.criterion, "criteria": sorted(criteria), "val_size": env_config.get("val_size"), **settings}
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != run_settings:
        raise UsageError(f"{out} holds candidates measured with other settings ({settings_path}); "
                         "use another --out or the same settings")
    write_json(settings_path, run_settings)
    rows_path = out / "candidates.jsonl"
    wanted = {c.name for c in candidates}
    rows = [r for r in read_rows(rows_path) if r["candidate"] in wanted
            and all(f"score_{name}" in r for name in modes)]
    write_jsonl(rows_path, rows)  # drops a line cut short
    done = {r["candidate"] for r in rows}
    evaluate_test = target.evaluator("test")
    todo = [c for c in candidates if c.name not in done]
    for candidate in tqdm(todo, desc=f"fidelity {target.name}", unit="candidate", disable=not show_progress):
        row = measure_candidate(env_for(candidate.criterion), candidate, built, finetune_epochs,
                                evaluate_test, seed)
        rows.append(row)
        append_jsonl(rows_path, row)
    summary = {"target": target.name, "flops_budget": budget, "candidates": len(rows),
               "finetune_epochs": finetune_epochs, "metric_name": target.metric_name,
               "metric_base_val": env.metric_base, **settings, "val_size": env_config.get("val_size"),
               "seconds_ground_truth_per_candidate": float(np.mean([r["seconds_ground_truth"] for r in rows])),
               "modes": summarise(rows, list(modes)), "criteria": compare_criteria(rows)}
    write_json(out / "fidelity.json", summary)
    write_rows_csv(out / "candidates.csv", rows)
    return summary


def reached_in_rounds(report: dict) -> bool:
    """Whether a run reached its network in rounds (``ngf_scheduled``, ``--rounds``): its units
    were chosen on a network fine-tuned between rounds, so surgery on the pretrained model
    does not rebuild it."""
    policy = str(report.get("policy", ""))
    return (policy == "ngf_scheduled" or policy.endswith("+rounds")
            or report.get("finetune_epochs_total", report.get("finetune_epochs")) != report.get("finetune_epochs"))


def finished_runs(folder: Path, budget: float,
                  skipped: dict[str, int] | None = None) -> list[tuple[str, dict, Path]]:
    """The single-shot runs under ``folder`` (a comparison's output folder, its ``runs/``, or
    one run) at ``budget`` whose network was fine-tuned: (``folder/run`` name, report, run folder). Runs
    reached in rounds are left out (:func:`reached_in_rounds`); ``skipped`` counts every run
    left out, by reason."""
    root = folder
    folder = folder / "runs" if (folder / "runs").is_dir() else folder
    paths = [folder / "report.json"] if (folder / "report.json").exists() else sorted(folder.glob("*/report.json"))
    skipped = {} if skipped is None else skipped
    runs = []
    for path in paths:
        report = json.loads(path.read_text())
        reason = ("not fine-tuned" if report.get("metric_finetuned") is None
                  else "another FLOPs budget" if abs((report.get("flops_budget") or 0) - budget) > 1e-9
                  else "reached in rounds" if reached_in_rounds(report)
                  else "random units not recorded" if report.get("criterion") == "random" and not report.get("kept_units")
                  else None)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            runs.append((f"{root.name}/{path.parent.name}", report, path.parent))
    return runs


def same_network_key(report: dict) -> tuple:
    """Runs with this key hold the same network and the same fine-tune (a run listed by two
    comparison folders, or copied): rescoring counts it once."""
    return (report.get("policy"), report.get("seed"), report.get("criterion"), tuple(report.get("keep_counts") or ()),
            json.dumps(report.get("kept_units")), report.get("metric_finetuned"))


def rescore_runs(target: Target, env_config: dict, budget: float, folders: list[Path], out: Path,
                 modes: tuple[str, ...] = tuple(EVALUATIONS), show_progress: bool = True) -> dict:
    """Fidelity on the networks searches actually chose: every finished run in ``folders``
    (see :func:`finished_runs`) is rebuilt from the pretrained model (its recorded units, or
    its keep counts under its criterion) and measured with every mode; the ground truth is
    the fine-tuned test metric its run already recorded, so no network is fine-tuned again.
    Writes ``out/fidelity.json`` and ``out/candidates.csv``; returns the summary."""
    skipped: dict[str, int] = {}
    unique: dict[tuple, tuple[str, dict, Path]] = {}
    for folder in folders:
        for name, report, run_folder in finished_runs(Path(folder), budget, skipped):
            key = same_network_key(report)
            if key in unique:
                skipped["listed twice"] = skipped.get("listed twice", 0) + 1
            else:
                unique[key] = (name, report, run_folder)
    runs = list(unique.values())
    left_out = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
    if len(runs) < 2:
        raise UsageError(f"found {len(runs)} finished single-shot runs at {budget:.0%} FLOPs under "
                         f"{', '.join(map(str, folders))}; fidelity needs at least 2"
                         + (f" (left out: {left_out})" if left_out else ""))
    epochs = {r["finetune_epochs"] for _, r, _ in runs}
    if len(epochs) > 1:
        raise UsageError(f"the runs were fine-tuned for different epochs ({sorted(epochs)}); their metrics "
                         "are not one ground truth: pass runs of one fine-tune")
    out.mkdir(parents=True, exist_ok=True)
    envs: dict[str, PruningEnv] = {}
    settings = {"bn_calibration_size": env_config.get("bn_calibration_size", 1024),
                "finetune_steps": env_config.get("finetune_steps", 20)}
    built = {name: make_evaluation(name, target, **settings) for name in modes}
    rows = []
    for name, report, run_folder in tqdm(runs, desc=f"rescoring {target.name}", unit="run", disable=not show_progress):
        criterion = report.get("criterion") or env_config.get("criterion", "l1")
        check_unit_settings(name, report, run_folder, env_config, criterion)
        if criterion not in envs:
            envs[criterion] = PruningEnv(target, **{**env_config, "flops_budget": budget, "evaluation": "plain",
                                                    "cache": False, "criterion": criterion})
        env = envs[criterion]
        if abs(env.metric_base - report["metric_base_val"]) > 1e-6:
            raise UsageError(f"run {name} measured the unpruned network at {report['metric_base_val']:.4f} on "
                             f"validation, this checkpoint and slice give {env.metric_base:.4f}: rescore runs "
                             "with the checkpoint (--checkpoint) and --val-size they were made with")
        units = report.get("kept_units")
        model = (env.pruner.prune_indices([torch.tensor(u) for u in units]) if units
                 else env.pruner.prune_counts(np.array(report["keep_counts"]), criterion))
        row = {"candidate": name, "policy": report["policy"], "criterion": criterion, "keep_counts": report["keep_counts"],
               "flops_ratio": report["flops_ratio"], "finetune_seed": report["seed"]}
        row.update(score_modes(env, model, built))
        row["metric_finetuned_test"] = report["metric_finetuned"]
        rows.append(row)
    env = next(iter(envs.values()))
    summary = {"target": target.name, "flops_budget": budget, "candidates": len(rows), "source": "finished runs",
               "runs": [str(f) for f in folders], "finetune_epochs": epochs.pop(),
               "metric_name": target.metric_name, "metric_base_val": env.metric_base, **settings,
               "val_size": env_config.get("val_size"), "runs_left_out": skipped, "modes": summarise(rows, list(modes))}
    searched = [r for r in rows if r["policy"] not in HEURISTICS]
    if len(searched) >= 2:  # where a search's choice is made: among the networks searches return
        summary["searched_candidates"] = len(searched)
        summary["modes_searched"] = summarise(searched, list(modes))
    write_json(out / "fidelity.json", summary)
    write_rows_csv(out / "candidates.csv", rows)
    return summary


def check_unit_settings(name: str, report: dict, run_folder: Path, env_config: dict, criterion: str) -> None:
    """Refuse a run whose units, rebuilt here from its keep counts, would differ from the ones
    it kept: an activation criterion measured on another calibration slice (the run's
    ``config.json`` beside its report says which)."""
    if report.get("kept_units") or criterion != "activation":
        return
    path = run_folder / "config.json"
    if not path.exists():
        return
    run_size = json.loads(path.read_text()).get("env", {}).get("calibration_size")
    if run_size is not None and run_size != env_config.get("calibration_size"):
        raise UsageError(f"run {name} ranked units by activation on {run_size} calibration examples, this "
                         f"config uses {env_config.get('calibration_size')}: rescore it with the config it was "
                         "made with (--config)")


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV (lists joined with spaces)."""
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()})


def format_summary(summary: dict) -> str:
    """The fidelity table for the terminal."""
    lines = [f"{summary['target']} at {summary['flops_budget']:.0%} FLOPs, {summary['candidates']} candidates, "
             f"against {summary['metric_name']} after a {summary['finetune_epochs']}-epoch fine-tune (test)",
             f"  {'mode':12s} {'Kendall tau':>12s} {'Spearman rho':>13s} {'s/candidate':>12s}"]
    for name, m in summary["modes"].items():
        lines.append(f"  {name:12s} {m['kendall_tau']:12.3f} {m['spearman_rho']:13.3f} "
                     f"{m['seconds_per_candidate']:12.2f}")
    if "modes_searched" in summary:
        lines.append(f"  only the {summary['searched_candidates']} networks searches chose (no heuristic's):")
        for name, m in summary["modes_searched"].items():
            lines.append(f"  {name:12s} {m['kendall_tau']:12.3f} {m['spearman_rho']:13.3f}")
    if "seconds_ground_truth_per_candidate" in summary:
        lines.append(f"  (ground truth, fine-tune + test: {summary['seconds_ground_truth_per_candidate']:.1f} "
                     "s/candidate)")
    else:
        lines.append("  (ground truth: the fine-tuned test metric each run recorded)")
    if summary.get("criteria"):
        lines.append(f"  {'criterion':12s} {'mean after FT':>14s} {'best on':>8s}  (same random allocations)")
        for name, c in summary["criteria"].items():
            lines.append(f"  {name:12s} {c['mean_metric_finetuned_test']:14.4f} {c['best_on']:5d}/{c['allocations']}")
    return "\n".join(lines)
