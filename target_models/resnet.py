"""Residual networks on CIFAR-10: ResNet-56 (He et al., 2016) and torchvision's ResNet-50
with a CIFAR stem. They are not ``nn.Sequential``: their coupled channels are found and
pruned by Torch-Pruning's dependency graph (:mod:`prune_env.graph`)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property

from torch import nn

from target_models.cifar import Cifar10Target
from target_models.training import TrainConfig


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; a 1x1 convolution on the shortcut when the
    shape changes (option B)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6n+2: a 3x3 stem, three stages of n basic blocks at 16, 32
    and 64 channels (strides 1, 2, 2), global average pooling and a linear classifier."""

    def __init__(self, blocks_per_stage: int = 9, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_ch, width, stride=2 if i > 0 and j == 0 else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet50_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-50 with a CIFAR stem: a 3x3 stride-1 first convolution and no
    max-pooling, so a 32x32 image reaches the last stage at 4x4."""
    from torchvision.models import resnet50

    model = resnet50(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


class ResidualCifar10(Cifar10Target):
    """A CIFAR-10 network that is not sequential: a pruned architecture is described by the
    kept units of each channel group, and built by pruning a fresh network to them."""

    @abstractmethod
    def build_network(self) -> nn.Module:
        """A freshly initialised, unpruned network."""

    @cached_property
    def default_widths(self) -> tuple[int, ...]:
        return tuple(int(u) for u in self.pruner_for(self.build_network()).units)

    def build_model(self, widths=None):
        model = self.build_network()
        if widths is None or tuple(int(w) for w in widths) == self.default_widths:
            return model
        return self.pruner_for(model).shape_of(widths).train()


class Resnet56Cifar10(ResidualCifar10):
    """ResNet-56: about 126 M FLOPs and 0.86 M parameters; AMC, DepGraph and DECORE report on it."""

    name = "resnet56_cifar10"
    train_config = TrainConfig(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4, autocast=True)
    finetune_lr = 1e-2
    eval_autocast = True

    def build_network(self):
        return CifarResNet(blocks_per_stage=9)


class Resnet50Cifar10(ResidualCifar10):
    """ResNet-50 (torchvision) with a CIFAR stem: the seed's gradual-pruning network, about
    1.3 G FLOPs at 32x32; pretraining it is GPU work."""

    name = "resnet50_cifar10"
    train_config = TrainConfig(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4, autocast=True)
    finetune_lr = 1e-2
    eval_autocast = True

    def build_network(self):
        return resnet50_cifar()
