"""Helpers shared by the tests: paths, the subprocess environment, and small targets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prune_env.env import PruningEnv
from target_models.base import Target

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = 600  # rows per split in data tests

if not os.environ.get("PRUNE_ENV_DATA_DIR") and SHARED_DATA.is_dir():
    os.environ["PRUNE_ENV_DATA_DIR"] = str(SHARED_DATA)
HAS_DATA = bool(os.environ.get("PRUNE_ENV_DATA_DIR"))
needs_data = pytest.mark.skipif(not HAS_DATA, reason="set PRUNE_ENV_DATA_DIR to a local copy of the data sets")


def script_env(home: Path) -> dict[str, str]:
    """Environment for running a script as a subprocess."""
    env = dict(os.environ)
    env["PRUNE_ENV_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


class _NoTraining(Target):
    """A target without data: fine-tuning does nothing and it cannot be pretrained."""

    metric_name = "accuracy"

    def finetune(self, model, epochs=1.0, seed=0, show_progress=False, steps=None):
        pass

    def pretrain(self, epochs=None, max_minutes=None, resume=False, show_progress=True):
        raise NotImplementedError


class ToyTarget(_NoTraining):
    """An MLP (Linear-Tanh per hidden layer) whose metric is a known function of its kept
    widths: ``1 - mean |keep-ratio - optimum|``, best at ``optimum``."""

    name = "toy"

    def __init__(self, widths=(40, 40), optimum=(0.85, 0.35)):
        self.default_widths, self.optimum = tuple(widths), np.array(optimum)

    def build_model(self, widths=None):
        sizes = [4, *(widths or self.default_widths)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], 2))

    def example_input(self, batch_size=1):
        return torch.zeros(batch_size, 4)

    def evaluator(self, split="val", size=None, offset=0):
        def evaluate(model: nn.Module) -> float:
            kept = [m.out_features for m in model if isinstance(m, nn.Linear)][:-1]
            return float(1.0 - np.abs(np.array(kept) / np.array(self.default_widths) - self.optimum).mean())
        return evaluate

    def calibration_inputs(self, n=512):
        return torch.randn(n, 4, generator=torch.Generator().manual_seed(0))


class ModelTarget(_NoTraining):
    """Any model on random inputs; its metric is agreement with the unpruned model's
    predictions on them (1.0 for the model itself)."""

    name = "model"

    def __init__(self, model_builder: Callable[[], nn.Module], inputs: torch.Tensor):
        self.model_builder, self.inputs = model_builder, inputs
        self.default_widths = ()
        with torch.no_grad():
            self.labels = model_builder().eval()(inputs).argmax(-1)

    def build_model(self, widths=None):
        return self.model_builder()

    def example_input(self, batch_size=1):
        return self.inputs[:batch_size]

    def evaluator(self, split="val", size=None, offset=0):
        @torch.no_grad()
        def evaluate(model: nn.Module) -> float:
            return float((model.eval()(self.inputs).argmax(-1) == self.labels).float().mean())
        return evaluate

    def calibration_inputs(self, n=512):
        return self.inputs[:n]


def toy_env(layers: int = 2, budget: float | None = None) -> PruningEnv:
    """The toy target's env. Without a budget: reward = metric - 0 * FLOPs (best at the
    optimum, 0.85 and 0.35 for two layers); with one: reward = metric at the budget."""
    torch.manual_seed(0)
    target = ToyTarget((40,) * layers, np.linspace(0.85, 0.35, layers))
    if budget is None:
        return PruningEnv(target, model=target.build_model(), flops_budget=None, reward="tradeoff",
                          reward_kwargs={"weight": 0.0}, min_keep=0.1)
    return PruningEnv(target, model=target.build_model(), flops_budget=budget, reward="budget", min_keep=0.1)
