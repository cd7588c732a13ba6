"""The residual targets (ResNet-56, ResNet-50 with a CIFAR stem) on tiny slices of CIFAR-10:
pretraining that resumes, an environment episode on the budget, the magnitude sweep."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from prune_env import PruningEnv
from prune_env.cost import count_flops, count_params
from target_models import get_target
from tests.helpers import needs_data


def test_resnet56_is_the_standard_cifar_network():
    target = get_target("resnet56_cifar10")
    model = target.build_model()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 27 + 2  # stem, two per block, two shortcut projections
    assert 0.85e6 < count_params(model) < 0.87e6
    assert count_flops(model, target.example_input()) == pytest.approx(126.8e6, rel=0.01)
    assert target.build_model()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@needs_data
# ResNet-50 goes through the same dependency-graph surgery as ResNet-56; its 20 s stay out of the default run
@pytest.mark.parametrize("name", ["resnet56_cifar10", pytest.param("resnet50_cifar10", marks=pytest.mark.slow)])
def test_residual_targets_pretrain_resumably_and_prune_on_the_budget(name):
    target = get_target(name, limit=32)
    target.train_config = replace(target.train_config, batch_size=8)  # 4 steps per epoch
    first = target.pretrain(epochs=0.5, show_progress=False)  # a partial run, then resumed to 1 epoch
    assert first["complete"] and first["epochs_done"] == pytest.approx(0.5, abs=0.2)
    resumed = target.pretrain(epochs=1, resume=True, show_progress=False)
    assert resumed["complete"] and resumed["epochs_done"] == pytest.approx(1.0)
    model = target.load_pretrained()
    env = PruningEnv(target, flops_budget=0.5, val_size=16, calibration_size=16, evaluation="adaptive_bn",
                     bn_calibration_size=16)
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    report = info["report"]
    assert abs(report["flops_ratio"] - 0.5) < 0.01
    pruned = env.last_model
    assert count_params(pruned) < count_params(model)
    assert count_flops(pruned, target.example_input()) == pytest.approx(report["flops_pruned"], rel=1e-3)
    torch.testing.assert_close(target.load_pretrained().state_dict()["fc.weight"], model.state_dict()["fc.weight"])


@needs_data
def test_magnitude_sweep_of_resnet56_finds_the_largest_fraction_within_one_point(tmp_path):
    from experiments.sweep import sweep

    target = get_target("resnet56_cifar10", limit=32)
    target.train_config = replace(target.train_config, batch_size=8)
    target.pretrain(epochs=1, show_progress=False)
    summary = sweep(target, "magnitude", [0.3, 0.95], tmp_path, finetune_epochs=0.5, max_drop=0.01)
    table = __import__("pandas").read_csv(tmp_path / "sweep.csv")
    assert list(table["fraction"]) == [0.0, 0.3, 0.95]
    weights = sum(m.weight.numel() for m in target.load_pretrained().modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    others = count_params(target.load_pretrained()) - weights
    # after each step (fine-tuning included) exactly that fraction of conv and dense weights is zero
    assert table["params"].iloc[2] == pytest.approx(others + 0.05 * weights, abs=weights * 0.001 + 64)
    within = table["metric"] >= summary["metric_base"] - 0.01
    assert list(table["within_tolerance"]) == list(within)
    assert summary["largest_fraction_within_tolerance"] == table.loc[within, "fraction"].max()
    assert json.loads((tmp_path / "sweep.json").read_text())["max_drop"] == 0.01
    assert (tmp_path / "sweep.png").exists()
