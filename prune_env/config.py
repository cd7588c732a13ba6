"""Configuration: one YAML per target and agent under ``configs/``, flags override them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping")
    return data


def merge(base: dict, override: dict) -> dict:
    """Recursive merge; values of ``override`` that are None are ignored."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def load_config(target: str, agent: str | None = None, config_file: str | Path | None = None,
                overrides: dict | None = None) -> dict[str, Any]:
    """``configs/<agent>.yaml``, then ``configs/<target>.yaml``, then ``config_file``, then flags."""
    config: dict[str, Any] = {}
    for name in (agent, target):
        path = CONFIG_DIR / f"{name}.yaml" if name else None
        if path is not None and path.exists():
            config = merge(config, load_yaml(path))
    if config_file is not None:
        config = merge(config, load_yaml(config_file))
    return merge(config, overrides or {})
