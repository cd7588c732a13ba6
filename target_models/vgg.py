"""VGG16 with batch norm for CIFAR-10: 13 conv layers and a 512-to-10 classifier."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from target_models.cifar import Cifar10Target
from target_models.training import TrainConfig

VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = {1, 3, 6, 9, 12}  # indices of the conv layers followed by 2x2 max-pooling


def build_vgg16(widths: Sequence[int] = VGG16_WIDTHS, num_classes: int = 10) -> nn.Sequential:
    """The CIFAR VGG16-BN: 32x32 input pooled five times down to 1x1."""
    layers: list[nn.Module] = []
    in_ch = 3
    for i, out_ch in enumerate(widths):
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
        if i in POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    layers += [nn.Flatten(), nn.Linear(in_ch, num_classes)]
    return nn.Sequential(*layers)


class Vgg16Cifar10(Cifar10Target):
    name = "vgg16_cifar10"
    default_widths = VGG16_WIDTHS
    train_config = TrainConfig(epochs=30, batch_size=128, lr=0.05, optimizer="sgd", weight_decay=5e-4, autocast=True)
    finetune_lr = 1e-3
    eval_autocast = True

    def build_model(self, widths=None):
        return build_vgg16(widths or self.default_widths)
