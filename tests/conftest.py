"""Shared fixtures: an isolated PRUNE_ENV_HOME per test, a quickly pretrained CartPole
policy. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

import tests.helpers  # noqa: F401  (points PRUNE_ENV_DATA_DIR at ../shared/data when it exists)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own checkpoint folder; decoded data is shared across the session."""
    home = tmp_path_factory.mktemp("home")
    shared_data_cache = tmp_path_factory.getbasetemp() / "data-cache"
    shared_data_cache.mkdir(exist_ok=True)
    (home / "data").symlink_to(shared_data_cache, target_is_directory=True)
    monkeypatch.setenv("PRUNE_ENV_HOME", str(home))
    return home


@pytest.fixture
def pretrained_cartpole(isolated_home):
    """A quickly pretrained CartPole policy in this test's home (one PPO chunk)."""
    from target_models import get_target

    get_target("cartpole_policy").pretrain(epochs=1, show_progress=False)
