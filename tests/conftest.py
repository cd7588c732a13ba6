"""Shared fixtures: an isolated PRUNE_ENV_HOME, the local data directory, tiny targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = 600  # rows per split in data tests

if not os.environ.get("PRUNE_ENV_DATA_DIR") and SHARED_DATA.is_dir():
    os.environ["PRUNE_ENV_DATA_DIR"] = str(SHARED_DATA)
HAS_DATA = bool(os.environ.get("PRUNE_ENV_DATA_DIR"))
needs_data = pytest.mark.skipif(not HAS_DATA, reason="set PRUNE_ENV_DATA_DIR to a local copy of the data sets")

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


def script_env(home: Path) -> dict[str, str]:
    """Environment for running a script as a subprocess."""
    env = dict(os.environ)
    env["PRUNE_ENV_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env
