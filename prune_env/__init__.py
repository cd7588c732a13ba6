"""prune-env: neural-network pruning as a Gymnasium environment."""

from gymnasium.envs.registration import register

from prune_env.config import make_env
from prune_env.env import PruningEnv

ENV_IDS = {
    "cnn_cifar10": "PruneEnv/CNN-CIFAR10-v0",
    "vgg16_cifar10": "PruneEnv/VGG16-CIFAR10-v0",
    "lstm_imdb": "PruneEnv/LSTM-IMDB-v0",
    "cartpole_policy": "PruneEnv/CartPole-Policy-v0",
    "resnet56_cifar10": "PruneEnv/ResNet56-CIFAR10-v0",
    "resnet50_cifar10": "PruneEnv/ResNet50-CIFAR10-v0",
}

for _target, _env_id in ENV_IDS.items():
    register(id=_env_id, entry_point="prune_env.config:make_env", kwargs={"target": _target})  # the target's config

__all__ = ["ENV_IDS", "PruningEnv", "make_env"]
