"""Final measurements of a pruned network and the ``report.json`` every script writes."""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_env.cost import measure_latency
from prune_env.env import PruningEnv
from prune_env.files import write_json
from target_models.device import autocast_enabled, torch_threads

REPORT_KEYS = (
    "target", "policy", "seed", "flops_budget", "keep_ratios", "flops_base", "flops_pruned", "params_base",
    "params_pruned", "metric_name", "metric_split", "metric_base", "metric_pruned", "metric_finetuned", "latency_ms_base",
    "latency_ms_pruned", "latency_batch_size", "search_seconds", "episodes", "evaluation", "budget_kind", "reward",
)
EVALUATION_KEYS = ("evaluation", "bn_calibration_size", "finetune_steps")
LATENCY_KEYS = ("latency_budget", "latency_ms_predicted", "latency_ms_predicted_base", "latency_ratio_predicted",
                "latency_table")
"""What a latency budget adds to an episode record (the table's prediction and settings)."""


class BaselineMeasurements:
    """The unpruned network's test-split measurements, each made once per environment.

    Make one per :class:`PruningEnv` and pass it to every :func:`final_report` call on that
    environment (``compare`` reports every heuristic and seed on one environment): the
    test-split evaluator is built, the unpruned metric measured and the unpruned latency
    timed (per batch size) only the first time they are asked for.
    """

    def __init__(self, env: PruningEnv):
        self.env = env
        self._evaluate = None
        self._metric: float | None = None
        self._latency: dict[int, dict] = {}

    @property
    def evaluate(self):
        """The target's test-split evaluator (``evaluate(model) -> metric``)."""
        if self._evaluate is None:
            self._evaluate = self.env.target.evaluator("test")
        return self._evaluate

    @property
    def metric(self) -> float:
        """The unpruned network's test-split metric."""
        if self._metric is None:
            self._metric = self.evaluate(self.env.model)
        return self._metric

    @property
    def threads(self) -> int | None:
        """The torch threads latency is measured with: the env's ``latency_threads`` (the count
        its latency table, and budget, are meant for), else the process's (None)."""
        return self.env.latency_threads

    def latency(self, batch_size: int) -> dict:
        """:func:`measure_latency` of the unpruned network at ``batch_size``."""
        if batch_size not in self._latency:
            with torch_threads(self.threads):
                self._latency[batch_size] = measure_latency(self.env.model, self.env.target.example_input(batch_size),
                                                            device=self.env.target.device)
        return self._latency[batch_size]


def final_report(env: PruningEnv, model: nn.Module, record: dict, *, policy: str, seed: int,
                 search_seconds: float, episodes: int, finetune_epochs: float = 1.0,
                 latency_batch_size: int = 64, show_progress: bool = False,
                 baseline: BaselineMeasurements | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Test-split metrics before and after fine-tuning, and latency, for a pruned ``model``.

    ``record`` is the environment's episode record of ``model``. ``finetune_epochs`` is the
    fine-tuning budget of the whole procedure: what a policy already spent between its pruning
    rounds (``record["finetune_epochs_spent"]``) is taken off it, so every policy of a
    comparison gets the same fine-tuning. ``baseline`` holds the
    unpruned network's measurements on ``env`` (made here when not given; pass the same one
    to every report on one environment to measure them once). Returns the report and the
    fine-tuned model (``model`` itself is left as it is).
    """
    target = env.target
    if baseline is None:
        baseline = BaselineMeasurements(env)
    elif baseline.env is not env:
        raise ValueError("baseline measures another environment than env")
    evaluate_test = baseline.evaluate
    metric_base = baseline.metric
    spent = float(record.get("finetune_epochs_spent", 0.0))
    finetune_epochs = max(0.0, finetune_epochs - spent)  # what is left for the final fine-tune
    finetuned = copy.deepcopy(model)
    if finetune_epochs > 0:
        with torch.random.fork_rng():  # the same fine-tune whatever ran before in this process
            torch.manual_seed(seed)
            target.finetune(finetuned, epochs=finetune_epochs, seed=seed, show_progress=show_progress)
    example = target.example_input(latency_batch_size)
    base_latency = baseline.latency(latency_batch_size)
    with torch_threads(baseline.threads):
        pruned_latency = measure_latency(finetuned, example, device=target.device)
    metric_pruned = evaluate_test(model)
    report = {
        "target": target.name, "policy": policy, "seed": seed, "flops_budget": env.flops_budget,
        "budget_kind": "latency" if env.latency_budget is not None else "flops" if env.flops_budget else None,
        "reward": record["reward"],
        "keep_ratios": record["keep_ratios"], "flops_base": record["flops_base"],
        "flops_pruned": record["flops_pruned"], "params_base": record["params_base"],
        "params_pruned": record["params_pruned"], "metric_name": target.metric_name, "metric_split": "test",
        "metric_base": metric_base, "metric_pruned": metric_pruned,
        "metric_finetuned": evaluate_test(finetuned) if finetune_epochs > 0 else metric_pruned,
        "latency_ms_base": base_latency["ms"], "latency_ms_pruned": pruned_latency["ms"],
        "latency_batch_size": latency_batch_size, "device": str(target.device),
        "eval_autocast": autocast_enabled(target.device, bool(getattr(target, "eval_autocast", False))),
        "search_seconds": round(search_seconds, 2),
        "episodes": episodes,
        # beyond the common schema
        "flops_ratio": record["flops_ratio"], "keep_counts": record["keep_counts"],
        "criterion": record["criterion"], "round_to": record.get("round_to"),
        "budget_tolerance": record.get("budget_tolerance", 0.0), "reward_name": record["reward_name"],
        **{k: record[k] for k in (*EVALUATION_KEYS, *LATENCY_KEYS) if k in record},
        **({"kept_units": record["kept_units"]} if "kept_units" in record else {}),
        "metric_base_val": record["metric_base_val"], "metric_pruned_val": record["metric_pruned_val"],
        "finetune_epochs": finetune_epochs, "finetune_epochs_total": spent + finetune_epochs,
        "rounds": record.get("rounds", 1),
        "latency_threads": pruned_latency["threads"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    return report, finetuned


def save_network(out_dir: str | Path, env: PruningEnv, model: nn.Module, report: dict) -> Path:
    """``out_dir/pruned_model.pt``: the run's (fine-tuned) pruned network, loadable with
    :func:`prune_env.export.load_pruned`."""
    from prune_env.export import save_pruned

    path = Path(out_dir) / "pruned_model.pt"
    save_pruned(path, model, env.pruner.widths_of(model), target=env.target,
                meta={"keep_ratios": report["keep_ratios"], "metric_finetuned": report["metric_finetuned"]})
    return path


def write_report(out_dir: str | Path, report: dict, config: dict) -> Path:
    """``out_dir/report.json`` beside ``out_dir/config.json`` (the resolved config)."""
    out_dir = Path(out_dir)
    write_json(out_dir / "config.json", config)
    return write_json(out_dir / "report.json", report, progress=True)


def format_report(report: dict) -> str:
    """A short table of a report for the terminal."""
    name = report["metric_name"]
    rows = [
        ("", "base", "pruned"),
        ("FLOPs", f"{report['flops_base']:,}", f"{report['flops_pruned']:,} ({report['flops_pruned'] / report['flops_base']:.1%})"),
        ("params", f"{report['params_base']:,}", f"{report['params_pruned']:,} ({report['params_pruned'] / report['params_base']:.1%})"),
        (f"{name} (test)", f"{report['metric_base']:.4f}", f"{report['metric_pruned']:.4f}"),
        (f"{name} fine-tuned", "", f"{report['metric_finetuned']:.4f}"),
        (f"latency ms (batch {report['latency_batch_size']})", f"{report['latency_ms_base']:.3f}",
         f"{report['latency_ms_pruned']:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    budget = (f"latency budget {report['latency_budget']}" if report.get("latency_budget") is not None
              else f"budget {report['flops_budget']}")
    lines = [f"{report['target']} / {report['policy']} / seed {report['seed']} / {budget}"]
    lines += [f"  {a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    lines.append(f"  keep-ratios: {', '.join(f'{r:.2f}' for r in report['keep_ratios'])}")
    lines.append(f"  search: {report['episodes']} episodes, {report['search_seconds']:.1f} s")
    return "\n".join(lines)
