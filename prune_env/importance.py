"""Importance criteria: which units of a layer matter most (higher score = keep)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

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


def global_threshold_counts(scores: list[torch.Tensor]) -> Callable[[float], np.ndarray]:
    """For a threshold rank x in [0, 1], units per layer whose per-layer-normalised score is
    among the top x of all units (one global threshold across layers)."""
    normalised = [(s.double() / max(float(s.mean()), 1e-12)).numpy() for s in scores]
    pooled = np.sort(np.concatenate(normalised))[::-1]

    def counts_at(x: float) -> np.ndarray:
        k = max(1, int(round(x * len(pooled))))
        threshold = pooled[k - 1]
        return np.array([max(1, int((s >= threshold).sum())) for s in normalised])

    return counts_at
