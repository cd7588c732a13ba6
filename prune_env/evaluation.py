"""How a pruned candidate is made ready before it is measured: the evaluation modes.

Right after surgery a network is a poor judge of itself: every batch-norm layer still holds
the running statistics of the unpruned network. A mode prepares the pruned copy in place,
then the environment measures it on its validation slice:

- ``plain``: nothing; the network straight after surgery.
- ``adaptive_bn``: batch-norm running statistics reset and re-estimated, without
  gradients, on a fixed slice of the training split (EagleEye, ECCV 2020).
- ``finetune``: a few optimiser steps of the target's own fine-tuning (AMC, LeGR do
  this); for networks without batch norm.

``scripts/proxy_fidelity.py`` measures which mode ranks candidates the way the final
fine-tune does; each target's config picks the best one as its default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from target_models.device import autocast, on_device, to_device

if TYPE_CHECKING:
    from target_models.base import Target

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class EvaluationMode(ABC):
    """Prepares a pruned copy (in place) before the environment measures it."""

    name: str

    @abstractmethod
    def prepare(self, model: nn.Module) -> None:
        """Make ``model`` ready to be measured; it is a copy the mode may change."""

    def settings(self) -> dict:
        """What identifies this mode's result (recorded in reports and cache keys)."""
        return {"evaluation": self.name}


class Plain(EvaluationMode):
    """The network straight after surgery."""

    name = "plain"

    def prepare(self, model: nn.Module) -> None:
        return None


class AdaptiveBN(EvaluationMode):
    """Re-estimate every batch-norm layer's running statistics on a training slice.

    The network runs in training mode over ``size`` training examples that lie apart from
    the activation-statistics slice and the validation slice (dropout stays off, no
    gradients); each batch-norm layer's running mean and unbiased variance become the
    exact statistics of its inputs over the whole slice, whatever the batch size. Only
    batch-norm buffers change; networks without batch norm are left as they are.
    """

    name = "adaptive_bn"

    def __init__(self, target: Target, size: int = 1024, batch_size: int = 128):
        if size < 2:
            raise ValueError(f"the adaptive_bn slice needs at least two examples, got {size}")
        self.target, self.size, self.batch_size = target, int(size), int(batch_size)
        self._inputs: torch.Tensor | None = None

    @property
    def inputs(self) -> torch.Tensor:
        if self._inputs is None:  # loaded on first use: networks without batch norm never need it
            self._inputs = self.target.bn_calibration_inputs(self.size)
        return self._inputs

    @property
    def batches(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    @torch.no_grad()
    def prepare(self, model: nn.Module) -> None:
        norms = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
        if not norms:
            return
        sums: dict[nn.Module, list] = {m: [0.0, 0.0, 0] for m in norms}

        def accumulate(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().transpose(0, 1).reshape(module.num_features, -1)
            acc = sums[module]
            acc[0], acc[1], acc[2] = acc[0] + x.sum(1), acc[1] + (x * x).sum(1), acc[2] + x.shape[1]

        handles = [m.register_forward_pre_hook(accumulate) for m in norms]
        model.eval()
        for m in norms:
            m.train()  # normalise with batch statistics, as in training
        mixed = bool(getattr(self.target, "eval_autocast", False))
        device = getattr(self.target, "device", torch.device("cpu"))
        try:
            with on_device(model, device), autocast(device, mixed):
                for batch in torch.tensor_split(self.inputs, self.batches):  # near-equal sizes
                    model(to_device(batch, device))
        finally:
            for handle in handles:
                handle.remove()
            model.eval()
        for m in norms:
            total, squares, n = sums[m]
            mean = total / n
            m.running_mean.copy_(mean)
            m.running_var.copy_((squares - n * mean * mean) / max(1, n - 1))
            m.num_batches_tracked.fill_(self.batches)

    def settings(self) -> dict:
        return {"evaluation": self.name, "bn_calibration_size": self.size}


class Finetune(EvaluationMode):
    """A few optimiser steps of the target's own fine-tuning, with a fixed seed."""

    name = "finetune"

    def __init__(self, target: Target, steps: int = 20, seed: int = 0):
        if steps < 1:
            raise ValueError(f"the finetune evaluation needs at least one step, got {steps}")
        self.target, self.steps, self.seed = target, int(steps), int(seed)

    def prepare(self, model: nn.Module) -> None:
        device_type = "mps" if self.target.device.type == "mps" else "cuda"  # its generator is forked too
        with torch.random.fork_rng(device_type=device_type):  # dropout draws from torch's generator: same each time
            torch.manual_seed(self.seed)
            self.target.finetune(model, seed=self.seed, steps=self.steps)
        model.eval()

    def settings(self) -> dict:
        return {"evaluation": self.name, "finetune_steps": self.steps}


EVALUATIONS = {cls.name: cls for cls in (Plain, AdaptiveBN, Finetune)}


def make_evaluation(name: str, target: Target, bn_calibration_size: int = 1024,
                    finetune_steps: int = 20) -> EvaluationMode:
    """The evaluation mode called ``name`` for ``target``."""
    if name == "plain":
        return Plain()
    if name == "adaptive_bn":
        return AdaptiveBN(target, bn_calibration_size)
    if name == "finetune":
        return Finetune(target, finetune_steps)
    raise ValueError(f"unknown evaluation mode {name!r}; choose one of: {', '.join(EVALUATIONS)}")
