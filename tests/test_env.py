"""PruningEnv follows the Gymnasium contract, meets budgets and never edits the model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.base import prune_with, run_episode
from agents.heuristics import HEURISTICS, FixedWidths, InRounds, make_heuristic
from experiments.report import REPORT_KEYS, final_report
from prune_env import ENV_IDS, PruningEnv
from prune_env.cost import count_flops
from target_models import TARGETS, get_target
from tests.helpers import REPO, needs_data, script_env

TINY_DATA = {"limit": 64, "val_size": 64, "calibration_size": 64}


def tiny_env(name: str, **kwargs) -> PruningEnv:
    torch.manual_seed(0)
    target = get_target(name, limit=TINY_DATA["limit"] if name != "cartpole_policy" else 4)
    options = {"val_size": TINY_DATA["val_size"] if name != "cartpole_policy" else 4,
               "calibration_size": TINY_DATA["calibration_size"], **kwargs}
    return PruningEnv(target, model=target.build_model(), **options)


def _hash(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for v in model.state_dict().values():
        h.update(v.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", [
    "cartpole_policy",
    pytest.param("cnn_cifar10", marks=needs_data),
    pytest.param("vgg16_cifar10", marks=needs_data),
    pytest.param("lstm_imdb", marks=needs_data),
])
def test_gymnasium_and_sb3_env_checkers_pass(name):
    env = tiny_env(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the non-symmetric action space is deliberate
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=False)


def test_registered_ids_make_the_environment():
    assert set(ENV_IDS) == set(TARGETS)
    target = get_target("cartpole_policy", limit=4)
    env = gym.make(ENV_IDS["cartpole_policy"], model=target.build_model(), val_size=4, flops_budget=0.5)
    assert isinstance(env.unwrapped, PruningEnv) and env.unwrapped.n_layers == 2


def test_registered_ids_take_the_targets_config_and_keywords_override_it(tmp_path):
    """gym.make builds the env the scripts build: the packaged config's settings (CartPole:
    50 validation episodes, the config's criterion), a --config file over them, keywords over both."""
    model = get_target("cartpole_policy", limit=4).build_model()
    configured = gym.make(ENV_IDS["cartpole_policy"], model=model).unwrapped
    assert configured.val_size == 50 and PruningEnv(model=model).val_size is None
    override = tmp_path / "mine.yaml"
    override.write_text("env:\n  criterion: activation\n  val_size: 8\n")
    env = gym.make(ENV_IDS["cartpole_policy"], model=model, config_file=str(override), val_size=4).unwrapped
    assert (env.criterion, env.val_size) == ("activation", 4)
    assert gym.make(ENV_IDS["cartpole_policy"], model=model, flops_budget=None, reward="tradeoff").unwrapped.budget is None


def _play(env: PruningEnv, seed: int, actions: list[float]):
    obs, _ = env.reset(seed=seed)
    trajectory, rewards = [obs], []
    for a in actions:
        obs, reward, terminated, _, info = env.step(np.array([a], dtype=np.float32))
        trajectory.append(obs)
        rewards.append(reward)
    assert terminated
    return np.stack(trajectory), rewards, info["report"]


def test_same_seed_same_observations_and_rewards():
    env = tiny_env("cartpole_policy", criterion="random", flops_budget=None, reward="tradeoff")
    actions = [0.4, 0.6]
    obs_a, rew_a, rep_a = _play(env, 7, actions)
    obs_b, rew_b, rep_b = _play(env, 7, actions)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert rew_a == rew_b and rep_a == rep_b
    assert obs_a.dtype == np.float32 and env.observation_space.contains(obs_a[0])


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_any_actions_land_on_the_budget(budget):
    env = tiny_env("cartpole_policy", flops_budget=budget)
    for actions in ([1.0, 1.0], [0.1, 0.1], [1.0, 0.1], [0.1, 1.0], [0.55, 0.45]):
        _, _, report = _play(env, 0, actions)
        assert abs(report["flops_ratio"] - budget) <= 0.01, (actions, report["flops_ratio"])


@needs_data
def test_final_report_matches_fvcore_and_the_schema():
    env = tiny_env("cnn_cifar10", flops_budget=0.4)
    _, rewards, report = _play(env, 0, [0.5, 0.5, 0.5])
    assert rewards[:-1] == [0.0, 0.0] and rewards[-1] == report["metric_pruned_val"]
    assert report["flops_pruned"] == count_flops(env.last_model, env.pruner.example)
    assert abs(report["flops_ratio"] - 0.4) <= 0.004
    assert report["params_pruned"] < report["params_base"]
    assert len(report["keep_ratios"]) == 3


@pytest.mark.parametrize("bad, message", [
    (np.array([np.nan]), "finite"),
    (np.array([np.inf]), "finite"),
    (np.array([1.5]), "outside"),
    (np.array([0.01]), "outside"),
    (np.array([0.5, 0.5]), "shape"),
    (np.ones((1, 1)), "shape"),
])
def test_bad_actions_raise_clear_errors(bad, message):
    env = tiny_env("cartpole_policy")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(bad)


def test_step_needs_a_reset_first_and_after_the_last_step():
    env = tiny_env("cartpole_policy")
    with pytest.raises(ResetNeeded, match="no episode has started"):
        env.step(np.array([0.5], dtype=np.float32))
    _, info = env.reset(seed=0)
    layers = [info["layer"]]
    done = False
    while not done:
        _, _, done, _, info = env.step(np.array([0.5], dtype=np.float32))
        layers.append(info["layer"])
    assert layers == list(range(env.n_layers + 1))
    with pytest.raises(ResetNeeded, match="episode is over"):
        env.step(np.array([0.5], dtype=np.float32))
    env.reset(seed=1)
    env.step(np.array([0.5], dtype=np.float32))  # a reset makes it usable again


def test_the_metric_scale_comes_from_the_target():
    cartpole, cnn = get_target("cartpole_policy"), get_target("cnn_cifar10")
    assert (cartpole.metric_scale, cnn.metric_scale) == (500.0, 1.0)
    env = tiny_env("cartpole_policy")
    assert env.metric_scale == 500.0
    _, rewards, report = _play(env, 0, [1.0] * env.n_layers)
    assert rewards[-1] == pytest.approx(report["metric_pruned_val"] / 500.0)


def test_bad_arguments_raise_clear_errors():
    target = get_target("cartpole_policy", limit=4)
    model = target.build_model()
    with pytest.raises(ValueError, match="flops_budget must be in"):
        PruningEnv(target, model=model, flops_budget=1.5)
    with pytest.raises(ValueError, match="below what min_keep"):
        PruningEnv(target, model=model, flops_budget=0.01, min_keep=0.5)
    with pytest.raises(ValueError, match="unknown reward"):
        PruningEnv(target, model=model, reward="speed")
    with pytest.raises(ValueError, match="needs a flops_budget"):
        PruningEnv(target, model=model, flops_budget=None, reward="budget")


def test_pretrained_weights_untouched_after_many_episodes():
    env = tiny_env("cartpole_policy", criterion="random")
    digest = _hash(env.model)
    rng = np.random.default_rng(0)
    for episode in range(12):
        _play(env, episode, list(rng.uniform(0.1, 1.0, 2)))
    assert _hash(env.model) == digest


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", sorted(set(HEURISTICS) - {"ngf_scheduled"}))
def test_every_heuristic_meets_the_budget(name, budget):
    env = tiny_env("cartpole_policy", flops_budget=budget,
                   criterion=HEURISTICS[name].preferred_criterion or "l1")
    report = run_episode(env, make_heuristic(name, env, seed=1), seed=0)
    assert abs(report["flops_ratio"] - budget) <= 0.01


@needs_data
@pytest.mark.parametrize("name", ["uniform", "l1", "ngf", "random"])
def test_heuristics_meet_the_budget_on_the_cnn(name):
    env = tiny_env("cnn_cifar10", flops_budget=0.3, criterion=HEURISTICS[name].preferred_criterion or "l1")
    policy = make_heuristic(name, env)
    report = run_episode(env, policy, seed=0)
    assert abs(report["flops_ratio"] - 0.3) <= 0.003
    if name == "uniform":
        assert np.ptp(policy.keep_ratios) <= 1 / env.units.min()  # equal up to whole units


def test_scheduled_ngf_follows_the_polynomial_and_meets_the_budget(pretrained_cartpole):
    target = get_target("cartpole_policy", limit=4)
    env = PruningEnv(target, flops_budget=0.4, val_size=4, calibration_size=64)
    policy = make_heuristic("ngf_scheduled", env)
    policy.finetune_epochs = 0.2
    assert policy.flops_targets() == pytest.approx([0.4 + 0.6 * (1 - k / 3) ** 3 for k in (1, 2, 3)])
    model, report = policy.run()
    assert abs(report["flops_ratio"] - 0.4) <= 0.01
    assert report["flops_pruned"] == count_flops(model, env.pruner.example)


def test_scheduled_ngf_fine_tunes_within_the_budget_every_policy_gets(pretrained_cartpole, monkeypatch):
    """The fine-tunes between rounds come out of the one budget: a third per round, and the
    final report fine-tunes only the last third."""
    target = get_target("cartpole_policy", limit=4)
    env = PruningEnv(target, flops_budget=0.4, val_size=4, calibration_size=64)
    spent = []
    finetune = target.finetune
    monkeypatch.setattr(target, "finetune", lambda model, epochs=1.0, **kw: (spent.append(epochs),
                                                                              finetune(model, epochs=epochs, **kw)))
    policy = make_heuristic("ngf_scheduled", env, finetune_budget=0.6)
    model, record = policy.run()
    assert spent == pytest.approx([0.2, 0.2]) and record["finetune_epochs_spent"] == pytest.approx(0.4)
    report, _ = final_report(env, model, record, policy="ngf_scheduled", seed=0, search_seconds=0.0, episodes=3,
                             finetune_epochs=0.6, latency_batch_size=2)
    assert spent == pytest.approx([0.2, 0.2, 0.2])
    assert report["finetune_epochs"] == pytest.approx(0.2) and report["finetune_epochs_total"] == pytest.approx(0.6)
    single = run_episode(env, make_heuristic("ngf", env), seed=0)
    report, _ = final_report(env, env.last_model, single, policy="ngf", seed=0, search_seconds=0.0, episodes=1,
                             finetune_epochs=0.6, latency_batch_size=2)
    assert spent[-1] == pytest.approx(0.6) and report["finetune_epochs_total"] == pytest.approx(0.6)


def test_a_single_shot_network_reached_in_rounds(pretrained_cartpole, monkeypatch):
    """InRounds ends at the very widths the policy's episode builds, shrinking fastest first,
    re-ranking units each round and fine-tuning between rounds out of the one budget."""
    target = get_target("cartpole_policy", limit=4)
    env = PruningEnv(target, flops_budget=0.3, val_size=4, calibration_size=64)
    single = run_episode(env, make_heuristic("l1", env), seed=0)["keep_counts"]
    spent = []
    finetune = target.finetune
    monkeypatch.setattr(target, "finetune", lambda model, epochs=1.0, **kw: (spent.append(epochs),
                                                                              finetune(model, epochs=epochs, **kw)))
    policy = InRounds(env, make_heuristic("l1", env), rounds=3, finetune_budget=0.6)
    plan = policy.widths(np.array(single))
    assert plan[-1].tolist() == single and all((a >= b).all() for a, b in zip(plan, plan[1:], strict=False))
    removed = [int((env.units - c).sum()) for c in plan]
    assert removed[0] > removed[1] - removed[0] > 0  # polynomial: most units go in the first round
    model, record, rounds = prune_with(env, policy)
    assert record["keep_counts"] == single and env.pruner.widths_of(model) == single and rounds == 3
    assert spent == pytest.approx([0.2, 0.2]) and record["finetune_epochs_spent"] == pytest.approx(0.4)
    assert policy.name == "l1+rounds"
    with pytest.raises(ValueError, match="prunes in rounds of its own"):
        InRounds(env, make_heuristic("ngf_scheduled", env))


@needs_data
def test_the_fine_tunes_between_rounds_do_not_depend_on_what_ran_before():
    """Dropout draws from the round's seed, so a searcher's network reached in rounds after its
    search equals the same widths reached in a fresh process."""
    target = get_target("cnn_cifar10", limit=64)
    env = PruningEnv(target, model=target.build_model(), flops_budget=0.5, val_size=64, calibration_size=64)
    states = []
    for before in (1, 2):
        torch.manual_seed(before)  # what a search would leave behind
        model, _ = InRounds(env, FixedWidths(env, [16, 32, 256]), seed=0, rounds=2, finetune_budget=1.0).run()
        states.append(model.state_dict())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_a_channel_agents_units_reached_in_rounds_are_its_very_units(pretrained_cartpole):
    """In rounds, a channel choice's units all stay: the criterion only orders the others' going.
    Without fine-tuning between rounds, the slices compose to the single-shot network exactly."""
    target = get_target("cartpole_policy", limit=4)
    env = PruningEnv(target, flops_budget=0.3, val_size=4, calibration_size=64, action_mode="mask",
                     criterion="activation")
    rng = np.random.default_rng(0)
    kept = [sorted(rng.choice(int(u), size=int(u) // 3, replace=False).tolist()) for u in env.units]
    chosen = FixedWidths(env, [len(k) for k in kept], kept)
    single, single_record = chosen.run()
    policy = InRounds(env, chosen, rounds=3, finetune_budget=0.0)
    model, record = policy.run()
    assert record["kept_units"] == kept == single_record["kept_units"] and record["rounds"] == 3
    assert env.pruner.widths_of(model) == [len(k) for k in kept]
    for (name, a), b in zip(model.state_dict().items(), single.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not the widths"):
        FixedWidths(env, [len(k) + 1 for k in kept], kept)


def test_fixed_widths_measure_that_architecture_whatever_the_budget(pretrained_cartpole):
    target = get_target("cartpole_policy", limit=4)
    env = PruningEnv(target, flops_budget=0.5, val_size=4, calibration_size=64, criterion="activation")
    model, record = prune_with(env, FixedWidths(env, [40, 7]))[:2]
    assert record["keep_counts"] == [40, 7] and env.pruner.widths_of(model) == [40, 7]
    assert record["flops_pruned"] == count_flops(model, env.pruner.example)
    assert abs(record["flops_ratio"] - 0.5) > 0.05  # not pulled to the budget
    kept = env.pruner.keep_indices([40, 7], "activation")
    assert torch.equal(model(torch.ones(2, 4)), env.pruner.prune_indices(kept)(torch.ones(2, 4)))
    for wrong in ([40], [0, 7], [40, 10_000]):
        with pytest.raises(ValueError, match="give 2 counts, each from 1 to the layer's units"):
            FixedWidths(env, wrong)


def test_evaluate_script_writes_the_report(pretrained_cartpole, isolated_home, tmp_path):
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", "l1",
         "--flops-budget", "0.5", "--finetune-epochs", "0.2", "--val-size", "8", "--out", str(out)],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["policy"] == "l1" and report["metric_name"] == "mean_return"
    assert abs(report["flops_pruned"] / report["flops_base"] - 0.5) <= 0.005
    assert json.loads((out / "config.json").read_text())["env"]["flops_budget"] == 0.5
    assert "keep-ratios" in result.stdout


def test_evaluate_script_measures_given_widths(pretrained_cartpole, isolated_home, tmp_path):
    out = tmp_path / "widths"
    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--widths", "40,7",
         "--finetune-epochs", "0", "--val-size", "4", "--out", str(out)],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["keep_counts"] == [40, 7] and report["policy"] == "widths" and report["policy_mode"] == "widths"
    wrong = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--widths", "40", "--out",
         str(tmp_path / "wrong")], cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "--widths: widths [40] do not fit cartpole_policy: give 2 counts" in wrong.stderr


def test_a_reports_keep_ratios_at_the_floor_replay_the_same_network():
    """min_keep 0.1 of a 64-unit layer keeps 6 units: the report says 6/64 < 0.1, and playing
    that ratio back must be accepted and keep the same 6 units."""
    env = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff", min_keep=0.1)
    env.reset(seed=0)
    for _ in range(env.n_layers):
        _, _, terminated, _, info = env.step(np.array([0.0 + 0.1], dtype=np.float32))
    first = info["report"]
    assert list(first["keep_counts"]) == [6, 6] and min(first["keep_ratios"]) < 0.1
    env.reset(seed=0)
    for ratio in first["keep_ratios"]:
        _, _, terminated, _, info = env.step(np.array([ratio], dtype=np.float32))
    assert terminated and list(info["report"]["keep_counts"]) == [6, 6]
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step(np.array([0.05], dtype=np.float32))


def test_mask_actions_are_cached_whatever_the_criterion():
    """In mask mode the actions choose the units, so the same masks are the same network even
    with the random criterion (which otherwise turns the cache off)."""
    env = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff", action_mode="mask", criterion="random")
    masks = [np.r_[np.ones(32), np.zeros(32)].astype(np.float32)] * env.n_layers
    reports = []
    for seed in (0, 1):
        env.reset(seed=seed)
        for mask in masks:
            _, _, terminated, _, info = env.step(mask)
        reports.append(info["report"])
    assert (env.cache_hits, env.cache_misses) == (1, 1)
    assert reports[0]["reward"] == reports[1]["reward"]
