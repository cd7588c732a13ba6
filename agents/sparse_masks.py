"""Weight masks on the dense layers of a network: masked weights stay exactly zero.

:class:`SparseLayers` holds one boolean mask per ``nn.Linear`` weight. Three things keep the
masked weights at zero: a gradient hook multiplies every gradient by the mask, a post-step
hook on each optimiser multiplies the weights by it (Adam's moments would otherwise move a
weight whose gradient is zero), and :meth:`SparseLayers.apply` masks the target networks
after their Polyak updates. With the hooks switched off (:meth:`dense_gradients`) a
backward pass gives the gradients of the masked weights too: the "potential gradients"
from which connections are grown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def erdos_renyi_densities(shapes: list[tuple[int, int]], sparsity: float) -> np.ndarray:
    """Per-layer densities of the Erdős–Rényi allocation (RigL): density proportional to
    ``(n_in + n_out) / (n_in * n_out)``, scaled so that the layers together keep
    ``1 - sparsity`` of their weights; a layer that would exceed density 1 is dense and the
    rest are scaled again."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if sparsity == 0:
        return np.ones(len(shapes))
    sizes = np.array([o * i for o, i in shapes], dtype=float)
    raw = np.array([(o + i) / (o * i) for o, i in shapes])
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        kept = (1 - sparsity) * sizes.sum() - sizes[dense].sum()
        scale = kept / (raw[~dense] * sizes[~dense]).sum()
        densities = np.where(dense, 1.0, raw * scale)
        if (densities <= 1).all():
            return densities
        dense |= densities > 1


class SparseLayers:
    """Masks of ``layers`` (``nn.Linear``), kept in force on the layers, on the optimisers'
    steps and on the matching ``targets`` (layers of target networks, or ``None``).

    ``densities`` gives each layer's starting share of active weights, drawn at random
    with ``rng``; ``masks`` (saved ones, to resume) replace the draw.
    """

    def __init__(self, layers: list[nn.Linear], optimizers: list[torch.optim.Optimizer],
                 targets: list[nn.Linear | None], densities: np.ndarray | None = None,
                 rng: np.random.Generator | None = None, masks: list[torch.Tensor] | None = None):
        self.layers, self.targets = layers, targets
        if masks is not None:
            self.masks = [m.to(layer.weight.device).bool() for m, layer in zip(masks, layers, strict=True)]
        else:
            self.masks = [self._random_mask(layer, d, rng) for layer, d in zip(layers, densities, strict=True)]
        self.optimizers = optimizers
        self.masking = True
        self._handles = [layer.weight.register_hook(self._gradient_hook(i)) for i, layer in enumerate(layers)]
        self._handles += [opt.register_step_post_hook(lambda *_: self.apply(targets=False)) for opt in optimizers]
        self.apply()

    @staticmethod
    def _random_mask(layer: nn.Linear, density: float, rng: np.random.Generator) -> torch.Tensor:
        n = layer.weight.numel()
        keep = np.zeros(n, dtype=bool)
        keep[rng.choice(n, size=max(1, round(density * n)), replace=False)] = True
        return torch.from_numpy(keep.reshape(layer.weight.shape)).to(layer.weight.device)

    def _gradient_hook(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self.masks[i] if self.masking else grad

        return hook

    @torch.no_grad()
    def apply(self, targets: bool = True) -> None:
        """Zero every masked weight (and, with ``targets``, the target networks' too)."""
        for layer, target, mask in zip(self.layers, self.targets, self.masks, strict=True):
            layer.weight.mul_(mask)
            if targets and target is not None:
                target.weight.mul_(mask)

    @contextmanager
    def dense_gradients(self) -> Iterator[None]:
        """Within: gradients are not masked (the potential gradients of inactive weights)."""
        self.masking = False
        try:
            yield
        finally:
            self.masking = True

    def active(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))

    def total(self) -> int:
        return int(sum(m.numel() for m in self.masks))

    def sparsity(self) -> float:
        """Share of the masked layers' weights that are zero by the masks."""
        return 1 - self.active() / self.total()

    def set_mask(self, i: int, mask: torch.Tensor, grown: torch.Tensor, init: str = "zero") -> None:
        """Install layer ``i``'s new ``mask``; the ``grown`` weights (newly active) start at
        zero or LeCun-normal (``init='lecun'``), with their Adam moments cleared."""
        layer = self.layers[i]
        with torch.no_grad():
            if init == "lecun":
                std = 1.0 / np.sqrt(layer.weight.shape[1])
                layer.weight[grown] = torch.randn(int(grown.sum()), device=layer.weight.device) * std
            else:
                layer.weight[grown] = 0.0
        for opt in self.optimizers:
            state = opt.state.get(layer.weight)
            for key in ("exp_avg", "exp_avg_sq"):
                if state and key in state:
                    state[key][grown] = 0.0
        self.masks[i] = mask
        self.apply()

    def state_dict(self) -> dict:
        return {"masks": [m.cpu() for m in self.masks]}

    def remove(self) -> None:
        """Detach the hooks (the masks stop being enforced)."""
        for handle in self._handles:
            handle.remove()
