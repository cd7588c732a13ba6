"""The shared CIFAR-10 side of the image targets: data, batches, training settings."""

from __future__ import annotations

import numpy as np
import torch

from target_models.base import SupervisedTarget
from target_models.data import CIFAR10, Splits, load_image_classification
from target_models.images import CIFAR10_MEAN, CIFAR10_STD, random_crop_flip, to_image_tensor


class Cifar10Target(SupervisedTarget):
    """A CIFAR-10 classifier: crop-and-flip augmentation, per-channel normalisation."""

    def load_splits(self) -> Splits:
        return load_image_classification(CIFAR10, self.data_dir, self.limit)

    def to_batch(self, x, y, augment, rng):
        if augment:
            x = random_crop_flip(x, rng)
        return to_image_tensor(x, CIFAR10_MEAN, CIFAR10_STD), torch.from_numpy(np.asarray(y))

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, 3, 32, 32)
