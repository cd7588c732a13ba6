"""Pruning during training: periods respected, schedules followed, pruned stays pruned,
saved models physically smaller with the masked model's outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from prune_env.cost import count_params
from prune_env.during_training import MagnitudePruner, NGFPruner, ScheduledNGFPruner
from target_models.small_nets import build_lenet5, build_mlp
from tests.helpers import REPO, needs_data, script_env


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return x, y


def _train_periods(model, pruner, periods, steps=3, start=0):
    """A tiny training loop calling the pruner like the real ones do."""
    x, y = _data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    keep_history = []
    for t in range(start, start + periods):
        pruner.begin_period(t)
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pruner.end_period(t)
        keep_history.append(getattr(pruner, "unit_keep_fraction", lambda: None)())
    return keep_history


def test_ngf_prunes_only_at_the_end_of_the_critical_period():
    torch.manual_seed(0)
    model = build_mlp((64, 32))
    pruner = NGFPruner(critical_start=2, critical_duration=2, keep_fraction=0.5)
    pruner.attach(model, torch.zeros(1, 1, 28, 28))
    history = _train_periods(model, pruner, 6)
    assert history[:3] == [1.0, 1.0, 1.0]  # periods 0-2: nothing pruned
    assert pruner.pruned_at == [3]
    assert history[3] == pytest.approx(0.5, abs=1 / 96) and history[3:] == [history[3]] * 3


def test_scheduled_keep_fraction_follows_the_polynomial():
    torch.manual_seed(0)
    model = build_mlp((64, 32))
    pruner = ScheduledNGFPruner(pruning_start=1, pruning_end=5, frequency=2, initial_keep=1.0, final_keep=0.4,
                                power=3.0)
    pruner.attach(model, torch.zeros(1, 1, 28, 28))
    history = _train_periods(model, pruner, 7)
    assert pruner.pruned_at == [1, 3, 5]
    for t in pruner.pruned_at:
        expected = 0.4 + 0.6 * (1 - (t - 1) / 4) ** 3
        assert pruner.keep_at(t) == pytest.approx(expected)
        assert history[t] == pytest.approx(expected, abs=2 / 96)
    assert history[0] == 1.0 and history[6] == history[5]


def test_magnitude_removes_the_requested_share_and_it_stays_removed():
    torch.manual_seed(0)
    model = build_lenet5()
    pruner = MagnitudePruner(prune_fraction=0.6, apply_at=1)
    pruner.attach(model, torch.zeros(1, 1, 28, 28))
    _train_periods(model, pruner, 2)
    assert pruner.weight_sparsity() == pytest.approx(0.6, abs=1e-4)
    zero_before = [m.weight.detach() == 0 for m in pruner.masks]
    _train_periods(model, pruner, 3, start=2)  # training goes on
    model(torch.randn(2, 1, 28, 28))  # forward passes re-apply the masks
    for zeros, m in zip(zero_before, pruner.masks, strict=True):
        assert (m.weight.detach()[zeros] == 0).all()
    exported = pruner.export()
    assert sum(int((p == 0).sum()) for p in exported.parameters()) >= 0.6 * sum(
        m.weight.numel() for m in pruner.masks) - 1
    assert pruner.params_after() < pruner.params_before


@pytest.mark.parametrize("build", [lambda: build_mlp((64, 32)), build_lenet5])
def test_pruned_units_stay_pruned_and_export_is_smaller_with_same_outputs(build):
    torch.manual_seed(0)
    model = build()
    pruner = NGFPruner(critical_start=0, critical_duration=1, keep_fraction=0.4)
    pruner.attach(model, torch.zeros(1, 1, 28, 28))
    _train_periods(model, pruner, 1)
    _train_periods(model, pruner, 3, start=1)  # three more periods of training after pruning
    x, _ = _data(16, seed=1)
    outputs: dict[int, torch.Tensor] = {}
    handles = [model[layer.activation_position].register_forward_hook(
        lambda m, i_, o, i=i: outputs.setdefault(i, o)) for i, layer in enumerate(pruner.layers)]
    model.eval()
    model(x)
    for h in handles:
        h.remove()
    for i in range(len(pruner.layers)):  # masked units output exactly zero
        dead = ~pruner.masks.keep[i]
        assert dead.any() and (outputs[i][:, dead] == 0).all()
    exported = pruner.export()
    assert count_params(exported) < count_params(model)
    torch.testing.assert_close(exported(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def _run(args, home):
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=script_env(home), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_data
def test_supervised_script_writes_results_and_a_smaller_model(isolated_home, tmp_path):
    _run(["scripts/train_with_pruning.py", "--task", "supervised", "--dataset", "fashion_mnist", "--model",
          "lenet5", "--epochs", "3", "--limit", "512", "--pruning-method", "ngf", "--critical-start", "0",
          "--critical-duration", "1", "--keep-fraction", "0.5", "--root", str(tmp_path), "--name", "t",
          "--quiet"], isolated_home)
    run = tmp_path / "supervised" / "fashion_mnist" / "lenet5" / "t"
    results = json.loads((run / "results.json").read_text())
    assert results["pruned_at"] == [0] and results["params_after"] < results["params_before"]
    assert len(results["history"]) >= 1 and {"loss", "val_accuracy"} <= set(results["history"][0])
    assert results["test_accuracy"] == pytest.approx(results["test_accuracy_masked"], abs=1e-6)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert sum(v.numel() for k, v in saved["state_dict"].items()) == results["params_after"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG" and (run / "config.json").exists()


@pytest.mark.slow  # two short RL trainings: about 14 s
def test_rl_script_and_plot_results(isolated_home, tmp_path):
    for method in ("none", "magnitude"):
        _run(["scripts/train_with_pruning.py", "--task", "rl", "--episodes", "32", "--pruning-method", method,
              "--prune-fraction", "0.5", "--pruning-apply", "15", "--root", str(tmp_path), "--name", method,
              "--video-every", "16", "--quiet"], isolated_home)
    results = json.loads((tmp_path / "rl" / "CartPole-v1" / "policy_mlp" / "magnitude" / "results.json").read_text())
    assert len(results["history"]) == 32 and results["pruned_at"] == [15]
    rewards = [h["reward"] for h in results["history"]]
    assert results["history"][-1]["running_avg"] == pytest.approx(np.mean(rewards[-100:]))
    out = _run(["scripts/plot_results.py", "--root", str(tmp_path), "--task", "rl"], isolated_home)
    assert "magnitude" in out.stdout and "none" in out.stdout
    assert (tmp_path / "rl" / "CartPole-v1_policy_mlp_comparison.png").exists()


def test_sweep_writes_csv_and_finds_the_tolerated_fraction(isolated_home, tmp_path):
    from target_models import get_target

    get_target("cartpole_policy").pretrain(epochs=2, show_progress=False)
    _run(["scripts/sweep.py", "--target", "cartpole_policy", "--method", "l1", "--fractions", "0.3,0.9",
          "--out", str(tmp_path)], isolated_home)
    import pandas as pd

    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table["fraction"]) == [0.0, 0.3, 0.9]
    assert table["params"].is_monotonic_decreasing
    summary = json.loads((tmp_path / "sweep.json").read_text())
    within = table["metric"] >= summary["metric_base"] * (1 - summary["tolerance"])
    assert list(table["within_tolerance"]) == list(within)
    assert summary["largest_fraction_within_tolerance"] == table.loc[within, "fraction"].max()
    assert table["metric"].iloc[0] == summary["metric_base"]
    assert (tmp_path / "sweep.png").exists()
