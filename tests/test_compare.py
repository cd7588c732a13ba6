"""compare.py writes the tables and the Pareto plot a user reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from experiments.compare import RESULT_COLUMNS, compare, finished_report, run_folder
from experiments.train import check_rounds
from prune_env.cli import UsageError
from prune_env.config import load_config
from target_models import get_target
from tests.helpers import REPO, script_env


def test_compare_writes_tables_and_a_png(isolated_home, tmp_path):
    get_target("cartpole_policy").pretrain(epochs=2, show_progress=False)
    out = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, "scripts/compare.py", "--target", "cartpole_policy", "--flops-budgets", "0.3",
         "--seeds", "1", "--heuristics", "uniform,l1,random", "--finetune-epochs", "0.2", "--val-size", "8",
         "--out", str(out)],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(RESULT_COLUMNS)
    assert list(results["policy"]) == ["uniform", "l1", "random"]
    assert (results["flops_budget"] == 0.3).all() and (results["seeds"] == 1).all()
    assert ((results["flops_ratio"] - 0.3).abs() <= 0.01).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 and {"metric_pruned", "metric_finetuned", "keep_ratios"} <= set(runs.columns)
    # one seed: each row of the table is that seed's run
    assert list(results["params_ratio"]) == pytest.approx(list(runs["params_pruned"] / runs["params_base"]), abs=5e-4)
    assert list(results["latency_ratio"]) == pytest.approx(
        list(runs["latency_ms_pruned"] / runs["latency_ms_base"]), abs=5e-4)
    assert list(results["metric_finetuned_mean"]) == pytest.approx(list(runs["metric_finetuned"]))
    assert results["metric_finetuned_std"].isna().all()  # no spread from one seed
    markdown = (out / "results.md").read_text()
    assert "| policy" in markdown and "unpruned" in markdown
    assert "±" not in markdown  # no spread is printed for a single seed
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    other = subprocess.run(  # a resumed comparison never mixes fine-tunes
        [sys.executable, "scripts/compare.py", "--target", "cartpole_policy", "--flops-budgets", "0.3",
         "--seeds", "1", "--heuristics", "uniform", "--finetune-epochs", "0.1", "--val-size", "8",
         "--out", str(out), "--resume"],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2
    assert "was run with evaluate.finetune_epochs = 0.2, this comparison uses 0.1" in other.stderr


def test_compare_rejects_bad_budgets(isolated_home, tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/compare.py", "--target", "cartpole_policy", "--flops-budgets", "0.3,1.4",
         "--out", str(tmp_path)], cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True)
    assert result.returncode == 2 and "--flops-budgets must lie in (0, 1]" in result.stderr


def test_compare_reaches_every_single_shot_network_in_rounds(pretrained_cartpole, tmp_path):
    """With ``evaluate.rounds`` every heuristic and searcher reaches its network in rounds out of
    the one fine-tuning budget; ngf_scheduled keeps its own rounds; resuming with other rounds fails."""
    config = load_config("cartpole_policy", overrides={
        "env": {"flops_budget": 0.3, "val_size": 3}, "search": {"episodes": 4},
        "evaluate": {"finetune_epochs": 0.2, "rounds": 2}})
    agent_config = load_config("cartpole_policy", "random_search", overrides={
        "env": {"flops_budget": 0.3, "val_size": 3}, "search": {"episodes": 4},
        "evaluate": {"finetune_epochs": 0.2, "rounds": 2}})
    table = compare(get_target("cartpole_policy"), config, [0.3], [0], tmp_path, heuristics=("l1", "ngf_scheduled"),
                    train_agents=("random_search",), agent_configs={"random_search": agent_config})
    rows = table.set_index("policy")
    assert rows.loc["l1", "rounds"] == 2 and rows.loc["random_search", "rounds"] == 2
    assert rows.loc["ngf_scheduled", "rounds"] == 3
    assert list(pd.read_csv(tmp_path / "results.csv")["rounds"]) == [2, 3, 2]
    assert list(rows["finetune_epochs_total"]) == pytest.approx([0.2, 0.2, 0.2])
    assert rows.loc["l1", "finetune_epochs"] == pytest.approx(0.1)  # half went between the two rounds
    searched = json.loads((run_folder(tmp_path, "random_search", 0.3, 0) / "report.json").read_text())
    assert searched["best_episode"] is not None and searched["best_reward"] is not None
    saved = torch.load(run_folder(tmp_path, "random_search", 0.3, 0) / "pruned_model.pt", weights_only=False)
    assert saved["meta"]["widths"] == searched["keep_counts"]  # the network the rounds reached is the one saved
    with pytest.raises(UsageError, match="evaluate.rounds = 2, this comparison uses 1"):
        finished_report(run_folder(tmp_path, "l1", 0.3, 0), {**config, "evaluate": {**config["evaluate"], "rounds": 1}})


def test_rounds_are_refused_where_they_cannot_re_measure_the_criterion():
    config = load_config("cartpole_policy", overrides={"evaluate": {"rounds": 3}})
    check_rounds(config)  # the l1 criterion: fine
    with pytest.raises(UsageError, match="not 'random'"):
        check_rounds({**config, "env": {**config["env"], "criterion": "random"}})
    check_rounds({**load_config("cartpole_policy"), "env": {**config["env"], "criterion": "random"}})  # single-shot
