"""The small CIFAR-10 CNN: conv 32, conv 64, max-pool, dense 512, 10 out."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from target_models.cifar import Cifar10Target
from target_models.training import TrainConfig


def build_cnn(widths: Sequence[int] = (32, 64, 512), num_classes: int = 10, in_channels: int = 3,
              image_size: int = 32) -> nn.Sequential:
    """3x3 convolutions with padding 1, so the dense layer sees (size/2)^2 maps after pooling."""
    c1, c2, dense = widths
    side = image_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(c2 * side * side, dense), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(dense, num_classes),
    )


class CnnCifar10(Cifar10Target):
    name = "cnn_cifar10"
    default_widths = (32, 64, 512)
    train_config = TrainConfig(epochs=12, batch_size=128, lr=1e-3, optimizer="adam", autocast=True)
    eval_autocast = True

    def build_model(self, widths=None):
        return build_cnn(widths or self.default_widths)
