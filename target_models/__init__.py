"""Target networks to prune, their data, evaluation, fine-tuning and pretraining."""

from target_models.base import SupervisedTarget, Target
from target_models.checkpoints import CheckpointError
from target_models.data import DataUnavailableError
from target_models.registry import TARGETS, UnknownTargetError, get_target
from target_models.user_model import ModelTarget

__all__ = [
    "TARGETS", "CheckpointError", "DataUnavailableError", "ModelTarget", "SupervisedTarget", "Target",
    "UnknownTargetError", "get_target",
]
