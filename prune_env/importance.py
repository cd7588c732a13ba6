"""Importance criteria: which units of a layer matter most (higher score = keep)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from prune_env.stats import LayerStats


class Importance(ABC):
    """Scores the units of prunable layer ``layer``; subclass and register to add one."""

    name: str

    @abstractmethod
    def scores(self, stats: LayerStats, layer: int, rng: np.random.Generator) -> torch.Tensor:
        """One score per unit."""


class L1Importance(Importance):
    """Magnitude: the L1 norm of the weights that produce the unit (Li et al., 2017)."""

    name = "l1"

    def scores(self, stats, layer, rng):
        return stats.l1[layer]


class ActivationImportance(Importance):
    """NGF: the unit's mean absolute activation on calibration data."""

    name = "activation"

    def scores(self, stats, layer, rng):
        return stats.activation[layer]


class RandomImportance(Importance):
    """Random scores from the caller's generator (a control)."""

    name = "random"

    def scores(self, stats, layer, rng):
        return torch.from_numpy(rng.random(len(stats.l1[layer])))


CRITERIA: dict[str, type[Importance]] = {c.name: c for c in (L1Importance, ActivationImportance, RandomImportance)}


def get_criterion(name: str) -> Importance:
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose one of: {', '.join(CRITERIA)}")
    return CRITERIA[name]()
