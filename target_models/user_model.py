"""Your own trained network as a target: bring the model, an example input and a function
that measures it; the environment, agents and heuristics then work on it as on a built-in
target. Networks that are not ``nn.Sequential`` are pruned through Torch-Pruning's
dependency graph (:mod:`prune_env.graph`)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from functools import cached_property

import torch
from torch import nn

from target_models.base import Evaluator, Target


class ModelTarget(Target):
    """A target made of your own network and functions.

    - ``model``: the trained network (never modified: episodes prune copies).
    - ``example_input``: one batch of the right shape and dtype (tracing, FLOPs, latency).
    - ``evaluate``: ``model -> metric`` (higher is better, at most ``metric_scale``) on your
      validation data; the search's reward reads it.
    - ``test_evaluate``: the same on held-out test data, for reports (default: ``evaluate``).
    - ``finetune``: ``finetune(model, epochs=..., steps=...)`` trains a pruned copy in place
      (``steps``: optimiser steps of the ``finetune`` evaluation mode, else None). Without
      it, fine-tuning and the ``finetune`` mode raise an error that says so.
    - ``calibration_inputs``: training inputs for activation statistics (the ``activation``
      criterion, observations) and for re-estimating batch norm (``adaptive_bn``).
    - ``keep_layers``: names of more modules whose output units must stay (the output layer always does).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, evaluate: Evaluator, *,
                 finetune: Callable[..., None] | None = None, test_evaluate: Evaluator | None = None,
                 calibration_inputs: torch.Tensor | None = None, keep_layers: Sequence[str] | None = None,
                 name: str = "my_model", metric_name: str = "accuracy", metric_scale: float = 1.0,
                 device: str | torch.device = "cpu"):
        super().__init__(device=device)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(evaluate):
            raise TypeError("evaluate must be a function model -> metric")
        if finetune is not None and not {"epochs", "steps"} <= set(inspect.signature(finetune).parameters):
            raise TypeError("finetune must take the model and the keywords epochs and steps: "
                            "finetune(model, epochs=1.0, steps=None)")
        self._model = copy.deepcopy(model).cpu().eval()  # yours is left where and as it is
        self._example = example_input.cpu()
        self._evaluate, self._test_evaluate = evaluate, test_evaluate or evaluate
        self._finetune = finetune
        self._calibration = calibration_inputs.cpu() if calibration_inputs is not None else None
        self.keep_layers = tuple(keep_layers) if keep_layers is not None else None
        self.name, self.metric_name, self.metric_scale = name, metric_name, float(metric_scale)

    @cached_property
    def default_widths(self) -> tuple[int, ...]:
        return tuple(int(u) for u in self.pruner_for(self._model).units)

    def build_model(self, widths: Sequence[int] | None = None) -> nn.Module:
        """A copy of your network (with its weights); with ``widths``, the architecture of
        a pruned copy with those units per layer (to load a saved pruned state dict into)."""
        if widths is None:
            return copy.deepcopy(self._model)
        return self.pruner_for(self._model).shape_of(widths)

    def load_pretrained(self, check_data: bool = True) -> nn.Module:
        return self._model

    def has_checkpoint(self) -> bool:
        return True

    def ensure_pretrained(self, show_progress: bool = True, start: bool = True) -> None:
        """Your network is trained already: nothing to pretrain or finish."""

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        reps = -(-batch_size // len(self._example))
        return self._example.repeat(reps, *([1] * (self._example.dim() - 1)))[:batch_size]

    def evaluator(self, split: str = "val", size: int | None = None, offset: int = 0) -> Evaluator:
        """``evaluate`` (``test_evaluate`` for the test split); ``size`` and ``offset`` are
        not used: slice your data in the function."""
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r}; use 'val' or 'test'")
        return self._test_evaluate if split == "test" else self._evaluate

    def calibration_inputs(self, n: int = 512) -> torch.Tensor:
        return (self._calibration if self._calibration is not None else self._example)[:n]

    def bn_calibration_inputs(self, n: int = 1024) -> torch.Tensor:
        return self.calibration_inputs(n)

    def finetune(self, model: nn.Module, epochs: float = 1.0, seed: int = 0, show_progress: bool = False,
                 steps: int | None = None) -> None:
        if self._finetune is None:
            raise ValueError(f"{self.name} has no fine-tuning function: pass finetune=... to ModelTarget, or "
                             "fine-tune for 0 epochs and use the plain or adaptive_bn evaluation")
        torch.manual_seed(seed)
        self._finetune(model, epochs=epochs, steps=steps)

    def pretrain(self, epochs=None, max_minutes=None, resume=False, show_progress=True) -> dict:
        raise ValueError(f"{self.name} is your own trained network: there is nothing to pretrain")
