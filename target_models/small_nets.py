"""Small classifiers for pruning during training: an MLP and LeNet-5."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_mlp(widths: Sequence[int] = (256, 128), in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """Flatten, then dense ReLU layers of ``widths``, then the classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def build_lenet5(widths: Sequence[int] = (6, 16, 120, 84), in_channels: int = 1, image_size: int = 28,
                 num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 with ReLU and max-pooling: conv 5x5 (6), pool, conv 5x5 (16), pool, 120, 84."""
    c1, c2, f1, f2 = widths
    side = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * side * side, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(), nn.Linear(f2, num_classes),
    )
