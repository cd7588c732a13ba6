"""Random search and evolution: budget, coverage, reproducibility, save/load/resume, progress."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.allocation import play_allocation, sample_allocation
from agents.base import run_episode
from agents.search import (
    AGENT_FILES,
    AGENTS,
    SearchMonitor,
    load_agent,
    make_agent,
    restore_checkpoint,
    search,
)
from agents.searchers import Evolution, RandomSearch
from prune_env.config import load_config
from prune_env.env import PruningEnv
from target_models import get_target
from target_models.checkpoints import CheckpointError
from tests.helpers import REPO, script_env, toy_env


class Recorder(gym.Wrapper):
    """Keeps every finished episode's report."""

    def __init__(self, env):
        super().__init__(env)
        self.reports: list[dict] = []

    def step(self, action):
        out = self.env.step(action)
        if out[2] or out[3]:
            self.reports.append(out[4]["report"])
        return out


def played(kind: str, env: PruningEnv, episodes: int, hparams: dict | None = None, seed: int = 0) -> list[dict]:
    recorder = Recorder(env)
    make_agent(kind, env, hparams, seed=seed).learn(episodes, env=recorder)
    assert len(recorder.reports) == episodes
    return recorder.reports


SMALL = {"random_search": {"batch_episodes": 4}, "evolution": {"population": 6, "parents": 2}}


@pytest.mark.parametrize("kind", ["random_search", "evolution"])
def test_every_episode_meets_the_budget(kind):
    env = toy_env(layers=4, budget=0.5)
    for report in played(kind, env, 30, SMALL[kind]):
        assert abs(report["flops_ratio"] - 0.5) <= 0.01
        assert all(env.min_keep - 1e-9 <= r <= 1.0 for r in report["keep_ratios"])


def test_the_sampler_covers_every_layer():
    env = toy_env(layers=4, budget=0.5)
    rng = np.random.default_rng(0)
    planned = np.array([sample_allocation(env, rng) for _ in range(200)])
    reports = played("random_search", env, 200)
    for ratios in (planned, np.array([r["keep_ratios"] for r in reports])):
        assert ratios.min() >= env.min_keep - 1e-9 and ratios.max() <= 1.0
        assert (ratios[:, -1] < 0.9).mean() > 0.4  # the last layer is not pinned at 1.0
        assert (ratios < 0.5).mean() > 0.1  # low ratios are drawn too
        means = ratios.mean(axis=0)
        assert means.max() - means.min() < 0.1, means


@pytest.mark.parametrize("kind", ["random_search", "evolution"])
def test_the_same_seed_plays_the_same_allocations(kind):
    env = toy_env(layers=3, budget=0.5)
    first = [r["keep_ratios"] for r in played(kind, env, 20, SMALL[kind], seed=1)]
    again = [r["keep_ratios"] for r in played(kind, env, 20, SMALL[kind], seed=1)]
    other = [r["keep_ratios"] for r in played(kind, env, 20, SMALL[kind], seed=2)]
    assert first == again
    assert first != other


def test_play_allocation_steps_through_a_wrapper():
    env = toy_env(layers=3, budget=None)
    monitor = SearchMonitor(env, show_progress=False)
    report = play_allocation(monitor, np.array([0.5, 0.25, 1.0]), seed=0)
    assert report["keep_ratios"] == [0.5, 0.25, 1.0] and monitor.episodes == 1


@pytest.mark.parametrize("kind, first, second", [
    ("random_search", 10, 7),
    ("evolution", 9, 14),  # population 6, parents 2: stops mid-generation 1
    ("evolution", 6, 8),  # stops exactly at the end of generation 0
])
def test_save_load_and_resume_equal_one_run(kind, first, second, tmp_path):
    env = toy_env(layers=3, budget=0.5)
    whole = Recorder(env)
    agent = make_agent(kind, env, SMALL[kind], seed=3)
    agent.learn(first + second, env=whole)

    parts = Recorder(env)
    calls: list[int] = []
    part = make_agent(kind, env, SMALL[kind], seed=3)
    part.learn(first, env=parts, callback=lambda a: calls.append(a.episodes_done))
    assert calls[-1] == first  # a callback after the last (maybe partial) batch
    part.save(tmp_path / "agent.pt")
    loaded = load_agent(tmp_path / "agent.pt", env)
    assert type(loaded) is AGENTS[kind] and loaded.hparams == part.hparams and loaded.episodes_done == first
    loaded.learn(second, env=parts)

    assert [r["keep_ratios"] for r in parts.reports] == [r["keep_ratios"] for r in whole.reports]
    assert [r["reward"] for r in parts.reports] == [r["reward"] for r in whole.reports]
    assert loaded.best_reward == agent.best_reward and loaded.best_ratios == agent.best_ratios
    assert loaded.episodes_done == agent.episodes_done == first + second
    obs, _ = env.reset(seed=0)
    for _ in range(env.n_layers):
        a, _ = agent.predict(obs)
        b, _ = loaded.predict(obs)
        np.testing.assert_array_equal(a, b)
        obs, *_ = env.step(a)


@pytest.mark.parametrize("kind", ["random_search", "evolution"])
def test_search_resumes_from_the_saved_episode_count(kind, tmp_path):
    env = toy_env(layers=2, budget=0.5)
    hparams = {"batch_episodes": 8} if kind == "random_search" else {"population": 6, "parents": 2}
    monitor = SearchMonitor(env, show_progress=False)
    agent = make_agent(kind, env, hparams, seed=0)
    search(agent, env, monitor, 16, tmp_path)  # evolution: 6 + 4 + 4 + 2 (mid-generation)
    assert monitor.episodes == 16
    best = monitor.best_record["reward"]

    resumed_monitor = SearchMonitor(env, show_progress=False)
    resumed = restore_checkpoint(kind, env, resumed_monitor, tmp_path)
    assert resumed.episodes_done == resumed_monitor.episodes == 16
    assert resumed_monitor.best_record["reward"] == best == resumed.best_reward
    search(resumed, env, resumed_monitor, 32, tmp_path)
    assert resumed_monitor.episodes == resumed.episodes_done == 32
    assert len(resumed_monitor.rewards) == 32

    fresh_monitor = SearchMonitor(env, show_progress=False)
    search(make_agent(kind, env, hparams, seed=0), env, fresh_monitor, 32)
    assert fresh_monitor.rewards == resumed_monitor.rewards


def test_load_rejects_a_wrong_kind_layer_count_or_file(tmp_path):
    env = toy_env(layers=2, budget=0.5)
    RandomSearch(env).learn(2).save(tmp_path / "random.pt")
    with pytest.raises(CheckpointError, match="random_search"):
        Evolution.load(tmp_path / "random.pt", env)
    with pytest.raises(CheckpointError, match="3-layer"):
        RandomSearch.load(tmp_path / "random.pt", toy_env(layers=3, budget=0.5))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_agent(tmp_path / "bad.pt", env)
    torch.save({"kind": "mystery"}, tmp_path / "mystery.pt")
    with pytest.raises(CheckpointError, match="mystery"):
        load_agent(tmp_path / "mystery.pt", env)


def test_predict_before_any_episode_meets_the_budget():
    env = toy_env(layers=3, budget=0.5)
    for kind in ("random_search", "evolution"):
        report = run_episode(env, make_agent(kind, env, seed=0))
        assert abs(report["flops_ratio"] - 0.5) <= 0.01


def test_evolution_improves_on_its_first_generation():
    env = toy_env(layers=2, budget=None)  # best at keep-ratios (0.85, 0.35)
    recorder = Recorder(env)
    agent = Evolution(env, seed=0)
    agent.learn(16 + 12 * 15, env=recorder)  # generation 0 and 15 more
    first_best = max(r["reward"] for r in recorder.reports[:16])
    assert agent.best_reward > first_best
    assert agent.best_reward == max(r["reward"] for r in recorder.reports)
    np.testing.assert_allclose(agent.best_ratios, [0.85, 0.35], atol=0.05)
    report = run_episode(env, agent)  # predict plays the best allocation
    assert report["reward"] == agent.best_reward


def test_random_search_keeps_the_best_episode():
    env = toy_env(layers=2, budget=0.5)
    recorder = Recorder(env)
    agent = RandomSearch(env, batch_episodes=5, seed=4)
    agent.learn(23, env=recorder)
    rewards = [r["reward"] for r in recorder.reports]
    best = int(np.argmax(rewards))
    assert agent.best_reward == rewards[best] and agent.best_ratios == recorder.reports[best]["keep_ratios"]
    assert agent.episodes_done == 23
    assert run_episode(env, agent)["reward"] == agent.best_reward


def test_load_agent_dispatches_on_the_saved_kind(tmp_path):
    env = toy_env(layers=2, budget=0.5)
    reinforce = make_agent("reinforce", env, {"batch_episodes": 2}, seed=0).learn(2)
    reinforce.save(tmp_path / "agent.pt")
    assert type(load_agent(tmp_path / "agent.pt", env)) is AGENTS["reinforce"]
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    Evolution(env, population=4, parents=1).learn(5).save(run / "checkpoint" / AGENT_FILES["evolution"])
    loaded = load_agent(run, env)
    assert type(loaded) is Evolution and loaded.generation == 1 and len(loaded.fitness) == 1


@pytest.mark.parametrize("kind", ["random_search", "evolution"])
def test_config_defaults_match_the_agents(kind):
    env = toy_env(layers=2, budget=0.5)
    config = load_config("toy", kind)
    agent = make_agent(kind, env, config["agent"], seed=5)
    assert set(config["agent"]) == set(agent.hparams) - {"seed"}
    assert agent.hparams == make_agent(kind, env, seed=5).hparams


@pytest.mark.parametrize("kind", ["random_search", pytest.param("evolution", marks=pytest.mark.slow)])
def test_train_agent_script_searches_and_resumes_with_a_search_baseline(kind, isolated_home, tmp_path):
    get_target("cartpole_policy").pretrain(epochs=1, show_progress=False)
    out = tmp_path / "run"
    base = [sys.executable, "scripts/train_agent.py", "--target", "cartpole_policy", "--agent", kind,
            "--out", str(out), "--quiet", "--finetune-epochs", "0", "--no-export", "--evaluation", "plain",
            *(["--reselect-top", "3", "--reselect-steps", "2"] if kind == "random_search" else [])]
    first = subprocess.run([*base, "--episodes", "6"], cwd=REPO, env=script_env(isolated_home),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*base, "--episodes", "10", "--resume"], cwd=REPO, env=script_env(isolated_home),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["policy"] == kind and report["episodes"] == report["episodes_played"] == 10
    assert report["evaluation"] == "plain" and abs(report["flops_pruned"] / report["flops_base"] - 0.5) <= 0.01
    if kind == "random_search":  # the best 3 of all 10 episodes, across the resume, measured again on unseen episodes
        reselection = report["reselection"]
        assert reselection["top"] == 3 and reselection["offset"] == 50 and len(reselection["candidates"]) == 3
        assert reselection["finetune_steps"] == 2
        assert reselection["prepared_by"] == {"evaluation": "finetune", "finetune_steps": 2}
        assert reselection["chosen_episode"] == report["best_episode"]
        assert [c["reward"] for c in reselection["candidates"]] == sorted(
            [c["reward"] for c in reselection["candidates"]], reverse=True)
    else:
        assert report["reselection"] is None
