"""Configuration as checked data: packaged YAML, typed sections, the order of the sources."""

from __future__ import annotations

import configparser
import copy
import fnmatch
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from agents.search import AGENTS
from prune_env import config
from prune_env.config import (
    AGENT_CONFIGS,
    SECTIONS,
    ConfigError,
    EnvConfig,
    load_config,
    packaged_names,
    resolve_config,
)
from prune_env.env import PruningEnv
from target_models import TARGETS
from tests.helpers import REPO

CONFIG_DIR = REPO / "prune_env" / "configs"


def _defaults(cls) -> dict:
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}


def test_every_target_and_agent_has_a_packaged_yaml_that_loads():
    assert set(packaged_names()) == set(TARGETS) | set(AGENTS)
    for target in TARGETS:
        for agent in (None, *AGENTS):
            resolved = load_config(target, agent)
            assert set(resolved) == set(SECTIONS) | ({"agent"} if agent else set())
    assert load_config("vgg16_cifar10")["env"]["evaluation"] == "adaptive_bn"
    assert load_config("cartpole_policy", "evolution")["agent"]["population"] == 16


def test_setup_cfg_ships_every_yaml_as_package_data():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    patterns = setup["options.package_data"]["prune_env"].split()
    yamls = sorted(p.relative_to(REPO / "prune_env").as_posix() for p in CONFIG_DIR.glob("*.yaml"))
    assert yamls and all(any(fnmatch.fnmatch(y, pattern) for pattern in patterns) for y in yamls)
    assert not (REPO / "configs").exists(), "one home for the YAML files: prune_env/configs"


def _loads_config(cwd: Path, pythonpath: str) -> dict:
    code = ("import json, prune_env.config as c; "
            "print(json.dumps({'file': c.__file__, 'config': c.load_config('cnn_cifar10', 'ppo')}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": pythonpath})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_yaml_loads_from_package_data_run_from_another_folder(tmp_path):
    """A wheel of the project (built here, installed nowhere) unpacked in a folder of its
    own: its configuration comes from the YAML inside the package, not from the source tree."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    for pattern in setup["options.packages.find"]["include"].split():
        for package in REPO.glob(pattern.rstrip("*")):
            if (package / "__init__.py").exists():
                shutil.copytree(package, source / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    site = tmp_path / "site"
    shutil.unpack_archive(next((tmp_path / "dist").glob("*.whl")), site, format="zip")
    assert sorted(p.name for p in (site / "prune_env" / "configs").glob("*.yaml")) == sorted(
        p.name for p in CONFIG_DIR.glob("*.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = _loads_config(elsewhere, str(site))
    assert Path(loaded["file"]).is_relative_to(site)
    assert loaded["config"] == load_config("cnn_cifar10", "ppo")
    assert loaded["config"]["env"]["val_size"] == 2000 and loaded["config"]["agent"]["n_epochs"] == 10


def test_sources_override_in_order(monkeypatch, tmp_path):
    """Agent YAML < target YAML < --config file < flags; a flag not given (None) changes nothing."""
    packaged = {
        "ppo": {"agent": {"learning_rate": 0.1, "gamma": 0.5}, "env": {"min_keep": 0.2, "val_size": 7}},
        "cartpole_policy": {"agent": {"learning_rate": 0.2}, "env": {"min_keep": 0.3, "flops_budget": 0.6},
                            "search": {"episodes": 11}, "evaluate": {"finetune_epochs": 2}},
    }
    monkeypatch.setattr(config, "packaged_yaml", lambda name: copy.deepcopy(packaged.get(name)))
    file = tmp_path / "mine.yaml"
    file.write_text("env:\n  flops_budget: 0.4\n  criterion: activation\nsearch:\n  episodes: 12\n"
                    "agent:\n  gamma: 0.7\n")
    resolved = load_config("cartpole_policy", "ppo", file, overrides={
        "env": {"flops_budget": 0.3, "criterion": None}, "search": {"episodes": None},
        "evaluate": {"finetune_epochs": None}})
    assert resolved["agent"]["learning_rate"] == 0.2  # target YAML over agent YAML
    assert resolved["env"]["min_keep"] == 0.3 and resolved["env"]["val_size"] == 7
    assert resolved["agent"]["gamma"] == 0.7  # --config over agent YAML
    assert resolved["search"]["episodes"] == 12  # --config over target YAML
    assert resolved["env"]["criterion"] == "activation"  # a flag not given keeps the file's value
    assert resolved["env"]["flops_budget"] == 0.3  # flag over --config
    assert resolved["evaluate"]["finetune_epochs"] == 2.0 and isinstance(resolved["evaluate"]["finetune_epochs"],
                                                                           float)
    assert resolved["agent"]["clip_range"] == 0.2 and resolved["agent"]["net_arch"] == [64, 64]  # defaults
    assert resolved["env"]["evaluation"] == "plain"
    without_file = load_config("cartpole_policy", "ppo")
    assert without_file["env"]["flops_budget"] == 0.6 and without_file["agent"]["gamma"] == 0.5


def test_a_config_file_may_set_null_and_nest_agent_sections(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text("env:\n  reward: tradeoff\n  flops_budget: null\n  reward_kwargs: {weight: 0.3}\n"
                    "agent:\n  ppo: {clip_range: 0.3}\n  reinforce: {hidden: 8}\n")
    ppo = load_config("cartpole_policy", "ppo", file)
    assert ppo["env"]["flops_budget"] is None and ppo["env"]["reward_kwargs"] == {"weight": 0.3}
    assert ppo["agent"]["clip_range"] == 0.3
    assert load_config("cartpole_policy", "reinforce", file)["agent"]["hidden"] == 8
    assert load_config("cartpole_policy", "evolution", file)["agent"] == _defaults(AGENT_CONFIGS["evolution"])
    assert "agent" not in load_config("cartpole_policy", None, file)


def test_a_target_config_sets_one_agent_kind_and_a_config_file_overrides_it(tmp_path):
    """vgg16_cifar10.yaml gives the channel agents width noise (measured best there) and no
    other agent kind or target; a --config file still has the last word."""
    assert load_config("vgg16_cifar10", "reinforce_channels")["agent"]["width_noise"] == 1.0
    assert load_config("cnn_cifar10", "reinforce_channels")["agent"]["width_noise"] == 0.0
    for kind in ("ppo", "reinforce", "evolution"):  # cnn_cifar10.yaml has no agent section
        assert load_config("vgg16_cifar10", kind)["agent"] == load_config("cnn_cifar10", kind)["agent"]
    assert "agent" not in load_config("vgg16_cifar10")
    file = tmp_path / "quiet.yaml"
    file.write_text("agent:\n  reinforce_channels: {width_noise: 0.0}\n")
    assert load_config("vgg16_cifar10", "reinforce_channels", file)["agent"]["width_noise"] == 0.0


@pytest.mark.parametrize("text, agent, message", [
    ("env:\n  flops_budgte: 0.4\n", None,
     "unknown key 'flops_budgte' in section env; valid keys: flops_budget, reward, criterion, min_keep"),
    ("search:\n  episode: 3\n", None, "unknown key 'episode' in section search; valid keys: episodes"),
    ("agnt:\n  hidden: 3\n", None, "unknown section 'agnt'; valid sections: env, evaluate, search, agent"),
    ("agent:\n  clip_range: 0.3\n", "reinforce",
     "unknown key 'clip_range' in section agent for agent reinforce; valid keys: learning_rate, batch_episodes"),
    ("agent:\n  learning_rat: 0.3\n", None, "unknown key 'learning_rat' in section agent; valid keys:"),
    ("agent:\n  ppo: {hiden: 3}\n", "ppo", "unknown key 'hiden' in section agent.ppo; valid keys: learning_rate"),
    ("env:\n  min_keep: lots\n", None, "env.min_keep must be a number, got 'lots'"),
    ("env:\n  val_size: 10.5\n", None, "env.val_size must be an integer or null, got 10.5"),
    ("search:\n  episodes: true\n", None, "search.episodes must be an integer, got True"),
    ("agent:\n  net_arch: 64\n", "ppo", "agent.net_arch must be a list of an integer, got 64"),
    ("env: 0.5\n", None, "section env must be a mapping"),
    ("- env\n", None, "must hold a mapping of sections"),
    ("env:\n  min_keep: 0\n", None, "env.min_keep must lie in (0, 1], got 0.0"),
    ("env:\n  reward: budgte\n", None, "env.reward 'budgte' is unknown; choose one of: budget, tradeoff"),
    ("env:\n  flops_budget: null\n", None, "the budget reward needs one"),
    ("agent:\n  parents: 16\n", "evolution", "agent.parents must be at least 1 and below agent.population"),
    ("agent:\n  batch_episodes: 1\n", "reinforce_channels",
     "agent.batch_episodes must be at least 2, got 1: REINFORCE normalises rewards within a batch"),
    ("agent:\n  init: global\n  init_keep: 0.3\n", "reinforce_channels",
     "agent.init 'global' starts the units it keeps at agent.init_keep, which must lie in (0.5, 1)"),
    ("agent:\n  init_keep: bset\n", "reinforce", "agent.init_keep must lie in (0, 1), be null or 'best', got 'bset'"),
    ("env: [1\n", None, "is not valid YAML at line 2"),
])
def test_a_bad_config_file_is_named_in_one_line(tmp_path, text, agent, message):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config("cartpole_policy", agent, file)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_flags_and_unknown_agents_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="command line: env.flops_budget must be a number"):
        load_config("cartpole_policy", overrides={"env": {"flops_budget": "half"}})
    with pytest.raises(ConfigError, match="unknown agent 'dqn'; choose one of: ppo"):
        load_config("cartpole_policy", "dqn")
    with pytest.raises(ConfigError, match="no such file"):
        load_config("cartpole_policy", config_file=tmp_path / "missing.yaml")


def test_reinforce_takes_best_as_its_starting_keep_ratio(tmp_path):
    file = tmp_path / "best.yaml"
    file.write_text("agent:\n  init_keep: best\n")
    assert resolve_config("cartpole_policy", "reinforce", file).agent.init_keep == "best"


def test_yaml_reads_3e_minus_4_as_text_and_the_check_reads_it_as_a_number(tmp_path):
    file = tmp_path / "lr.yaml"
    file.write_text("agent:\n  learning_rate: 3e-4\n")
    assert resolve_config("cartpole_policy", "ppo", file).agent.learning_rate == 3e-4


@pytest.mark.parametrize("kind", list(AGENTS))
def test_agent_sections_mirror_the_agents_keywords(kind):
    """Every hyperparameter of an agent's constructor is a typed key with the same default."""
    assert set(AGENT_CONFIGS) == set(AGENTS)
    params = {name: p.default for name, p in inspect.signature(AGENTS[kind].__init__).parameters.items()
              if name not in ("self", "env", "seed", "tensorboard_log", "_model")}
    defaults = _defaults(AGENT_CONFIGS[kind])
    assert set(defaults) == set(params)
    for name, default in params.items():
        assert defaults[name] == (list(default) if isinstance(default, tuple) else default), name


def test_env_section_keys_are_env_keywords_with_the_same_defaults():
    params = inspect.signature(PruningEnv.__init__).parameters
    for name, default in _defaults(EnvConfig).items():
        assert name in params and params[name].default == default, name
