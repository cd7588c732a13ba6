"""The registry of targets: ``name -> Target`` class."""

from __future__ import annotations

from pathlib import Path

from target_models.base import Target
from target_models.cnn import CnnCifar10
from target_models.lstm import LstmImdb
from target_models.policy_mlp import CartPolePolicy
from target_models.resnet import Resnet50Cifar10, Resnet56Cifar10
from target_models.vgg import Vgg16Cifar10

TARGETS: dict[str, type[Target]] = {
    cls.name: cls for cls in (CnnCifar10, Vgg16Cifar10, LstmImdb, CartPolePolicy, Resnet56Cifar10, Resnet50Cifar10)
}


class UnknownTargetError(ValueError):
    """A target name that is not in the registry."""


def get_target(name: str, data_dir: str | Path | None = None, limit: int | None = None,
               checkpoint: str | Path | None = None, device: str = "cpu") -> Target:
    """The target called ``name``; ``limit`` keeps only the first rows of each data split;
    ``checkpoint`` is a pretrained file to use instead of the project's own; ``device``
    (``auto``, ``cpu``, ``cuda``, ``mps``) is where it trains and measures."""
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name](data_dir=data_dir, limit=limit, checkpoint=checkpoint, device=device)
