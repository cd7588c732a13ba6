"""Learning agents learn, save and load, resume; exports agree with the in-memory model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agents.base import run_episode
from agents.heuristics import UniformPolicy
from agents.search import SearchMonitor, load_agent, make_agent, restore_checkpoint, search
from prune_env.env import PruningEnv
from prune_env.export import export_all, parity_input
from prune_env.pruner import Pruner
from target_models import get_target
from target_models.device import resolve_device
from tests.helpers import REPO, script_env, toy_env

OPTIMUM = np.array([0.85, 0.35])


def _random_mean_reward(env: PruningEnv, episodes: int = 30) -> float:
    rng = np.random.default_rng(0)
    rewards = []
    for i in range(episodes):
        env.reset(seed=i)
        for _ in range(env.n_layers):
            _, reward, _, _, _ = env.step(rng.uniform(env.min_keep, 1.0, 1).astype(np.float32))
        rewards.append(reward)
    return float(np.mean(rewards))


@pytest.mark.parametrize("kind, hparams, episodes", [
    ("reinforce", {"learning_rate": 0.05, "batch_episodes": 8}, 320),
    pytest.param("ppo", {"learning_rate": 3e-3, "n_steps": 64, "batch_size": 32}, 640,
                 marks=pytest.mark.slow),  # 640 episodes of real PPO training: about a minute
])
def test_agents_learn_the_known_best_keep_ratios(kind, hparams, episodes):
    env = toy_env()
    baseline = _random_mean_reward(env)
    agent = make_agent(kind, env, hparams, seed=0)
    agent.learn(episodes)
    report = run_episode(env, agent, seed=0, deterministic=True)
    assert report["reward"] > baseline + 0.1, (report["keep_ratios"], baseline)
    np.testing.assert_allclose(report["keep_ratios"], OPTIMUM, atol=0.12)


@pytest.mark.parametrize("kind", ["reinforce", "ppo"])
def test_save_load_round_trip_gives_the_same_actions(kind, tmp_path):
    env = toy_env()
    hparams = ({"n_steps": 32, "batch_size": 16, "clip_range": 0.1, "net_arch": (16, 8), "ent_coef": 0.01,
                "learning_rate": 1e-3} if kind == "ppo" else {"batch_episodes": 4, "hidden": 8})
    agent = make_agent(kind, env, hparams, seed=3)
    agent.learn(16)
    path = tmp_path / ("agent.zip" if kind == "ppo" else "agent.pt")
    agent.save(path)
    loaded = load_agent(path, env)
    assert loaded.episodes_done == agent.episodes_done == 16
    assert loaded.hparams == agent.hparams  # every hyperparameter survives the round trip
    obs, _ = env.reset(seed=0)
    for _ in range(env.n_layers):
        a, _ = agent.predict(obs, deterministic=True)
        b, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a, b)
        obs, *_ = env.step(a)


@pytest.mark.parametrize("kind", ["reinforce", "ppo"])
def test_search_resumes_from_the_saved_episode_count(kind, tmp_path):
    env = toy_env()
    hparams = {"n_steps": 32} if kind == "ppo" else {"batch_episodes": 8}
    monitor = SearchMonitor(env, show_progress=False)
    agent = make_agent(kind, env, hparams, seed=0)
    search(agent, env, monitor, 16, tmp_path)
    assert monitor.episodes == 16
    best = monitor.best_record["reward"]

    resumed_monitor = SearchMonitor(env, show_progress=False)
    resumed = restore_checkpoint(kind, env, resumed_monitor, tmp_path)
    assert resumed.episodes_done == resumed_monitor.episodes == 16
    assert resumed_monitor.best_record["reward"] == best
    assert resumed_monitor.best_model(torch.zeros(1, 4)).shape == (1, 2)
    search(resumed, env, resumed_monitor, 32, tmp_path)
    assert resumed_monitor.episodes == resumed.episodes_done == 32
    assert len(resumed_monitor.rewards) == 32
    straight = SearchMonitor(env, show_progress=False)  # the same search, never interrupted
    search(make_agent(kind, env, hparams, seed=0), env, straight, 32)
    assert resumed_monitor.rewards == straight.rewards


def _train_cartpole_run(home, out, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/train_agent.py", "--target", "cartpole_policy", "--agent", "reinforce",
               "--out", str(out), "--quiet", "--finetune-epochs", "0.2", "--no-export", *extra]
    result = subprocess.run(command, cwd=REPO, env=script_env(home), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_train_agent_script_runs_and_resumes(isolated_home, tmp_path):
    """Pretrains CartPole (a short PPO run), searches, resumes and reports."""
    out = tmp_path / "run"
    get_target("cartpole_policy").pretrain(epochs=2, show_progress=False)
    _train_cartpole_run(isolated_home, out, "--episodes", "8")
    second = _train_cartpole_run(isolated_home, out, "--episodes", "16", "--resume")
    assert "at episode 8 of 16" in second.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 16 and report["policy"] == "reinforce"
    assert report["device"] == str(resolve_device("auto"))  # the scripts' --device default
    assert report["eval_autocast"] is False  # the CartPole policy evaluates in float32 everywhere
    assert abs(report["flops_pruned"] / report["flops_base"] - 0.5) <= 0.01
    assert (out / "pruned_model.pt").exists() and (out / "tensorboard").is_dir()


@pytest.mark.slow  # four scripts in a row: about 20 s
def test_a_trained_run_exports_and_evaluates(isolated_home, tmp_path):
    out = tmp_path / "run"
    get_target("cartpole_policy").pretrain(epochs=2, show_progress=False)
    _train_cartpole_run(isolated_home, out, "--episodes", "8")
    report = json.loads((out / "report.json").read_text())
    exported = subprocess.run([sys.executable, "scripts/export.py", "--run", str(out), "--format", "onnx"],
                              cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    result = json.loads((out / "export.json").read_text())
    assert result["max_abs_diff"]["onnx"] < 1e-4 and set(result["latency_ms"]) == {"batch_1", "batch_64"}
    evaluated = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", str(out),
         "--flops-budget", "0.5", "--finetune-epochs", "0", "--val-size", "8", "--out", str(tmp_path / "ev")],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    saved_agent = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert saved_agent["policy"] == "reinforce" and saved_agent["metric_finetuned"] == saved_agent["metric_pruned"]
    # at the run's own budget, evaluate rebuilds the run's best network
    assert saved_agent["policy_mode"] == "run_best" and saved_agent["keep_ratios"] == report["keep_ratios"]
    other = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", str(out),
         "--flops-budget", "0.3", "--finetune-epochs", "0", "--val-size", "8", "--out", str(tmp_path / "ev3")],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-2000:]
    assert "warning: the agent in" in other.stderr and "trained at another budget: flops_budget 0.5 (now 0.3)" in other.stderr
    elsewhere = json.loads((tmp_path / "ev3" / "report.json").read_text())
    assert elsewhere["policy_mode"] == "deterministic" and abs(elsewhere["flops_ratio"] - 0.3) <= 0.01


def test_evaluate_rebuilds_a_run_on_the_checkpoint_the_run_pruned(isolated_home, tmp_path):
    """A run made with a checkpoint of its own (--checkpoint, $PRUNE_ENV_CHECKPOINTS) is
    rebuilt on that checkpoint, not on this machine's default one."""
    import shutil

    cartpole = get_target("cartpole_policy")  # an untrained policy saved as finished: no PPO needed here
    cartpole._save({"val_metric": 0.0, "state_dict": cartpole.build_model().state_dict()}, [], complete=True,
                   seconds=0.0)
    mine = tmp_path / "mine.pt"
    shutil.copy(cartpole.checkpoint_path, mine)
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    torch.save({"kind": "random_search"}, run / "checkpoint" / "agent_random_search.pt")
    (run / "config.json").write_text(json.dumps({"target": "cartpole_policy", "agent_kind": "random_search",
                                                 "env": {"flops_budget": 0.5}, "checkpoint": str(mine)}))
    (run / "report.json").write_text(json.dumps({"target": "cartpole_policy", "keep_ratios": [0.5, 0.5]}))
    evaluated = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", str(run),
         "--finetune-epochs", "0", "--val-size", "4", "--out", str(tmp_path / "ev")],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    config = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert config["checkpoint"] == str(mine.resolve())
    mine.unlink()  # gone: this machine's own checkpoint, with a warning
    again = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", str(run),
         "--finetune-epochs", "0", "--val-size", "4", "--out", str(tmp_path / "ev2")],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"the run pruned {mine}, which is not a file here" in again.stderr


@pytest.mark.parametrize("name", ["cnn_cifar10", "vgg16_cifar10", "lstm_imdb", "cartpole_policy"])
def test_export_parity_on_every_target(name, tmp_path):
    target = get_target(name)
    torch.manual_seed(0)
    base = target.build_model().eval()
    pruned = Pruner(base, target.example_input()).prune(0.5)
    result = export_all(pruned, base, target, tmp_path, batch_sizes=(1,))
    assert result["max_abs_diff"]["torchscript"] < 1e-5
    assert result["max_abs_diff"]["onnx"] < 1e-4
    base_bytes = sum(p.numel() for p in base.parameters()) * 4
    assert (tmp_path / "pruned.onnx").stat().st_size < base_bytes  # physically smaller, not masked


def test_export_parity_input_reaches_the_first_layers_weights():
    """An all-zeros example cannot tell a bias-free first convolution's weights apart; the
    parity input can, and it draws token ids over the whole vocabulary."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.Flatten())
    zeros = torch.zeros(2, 3, 8, 8)
    x = parity_input(conv, zeros)
    assert x.shape == zeros.shape and torch.equal(x, parity_input(conv, zeros))  # seeded
    assert conv(zeros).abs().max() == 0 and conv(x).abs().max() > 0
    tokens = parity_input(torch.nn.Embedding(1000, 8), torch.ones(2, 50, dtype=torch.long))
    assert tokens.dtype == torch.long and 100 < int(tokens.max()) < 1000


def test_episodes_past_the_budget_are_played_but_never_chosen():
    env = toy_env()
    monitor = SearchMonitor(env, total_episodes=5, show_progress=False)
    agent = make_agent("ppo", env, {"n_steps": 16}, seed=0)  # rollouts of 8 episodes
    search(agent, env, monitor, 5)
    assert monitor.episodes == 8 and monitor.counted_episodes == 5
    assert len(monitor.rewards) == 5
    assert monitor.best_record["episode"] <= 5
    assert monitor.best_record["reward"] == max(monitor.rewards)


def test_a_resumed_search_with_more_episodes_counts_only_candidates(tmp_path):
    env = toy_env()
    first = SearchMonitor(env, total_episodes=5, show_progress=False)
    agent = make_agent("ppo", env, {"n_steps": 16}, seed=0)  # rollouts of 8 episodes
    search(agent, env, first, 5, tmp_path)
    assert (first.episodes, first.counted_episodes) == (8, 5)
    resumed_monitor = SearchMonitor(env, total_episodes=10, show_progress=False)
    resumed = restore_checkpoint("ppo", env, resumed_monitor, tmp_path)
    search(resumed, env, resumed_monitor, 10, tmp_path)
    assert resumed_monitor.counted_episodes == 10 and len(resumed_monitor.rewards) == 10
    assert resumed_monitor.episodes == 16  # a second whole rollout, of which 5 are candidates


def test_a_resume_with_fewer_episodes_or_other_settings_is_refused(tmp_path):
    from experiments.train import refuse_changed_settings
    from prune_env.cli import UsageError
    from prune_env.files import write_json

    saved = {"target": "toy", "agent_kind": "ppo", "seed": 0, "env": {"flops_budget": 0.5}, "agent": {},
             "search": {"episodes": 16}}
    path = write_json(tmp_path / "config.json", saved)
    refuse_changed_settings(path, {**saved, "search": {"episodes": 32}})  # more episodes: a longer search
    with pytest.raises(UsageError, match="fewer --episodes than the run .* was started with \\(16\\)"):
        refuse_changed_settings(path, {**saved, "search": {"episodes": 8}})
    with pytest.raises(UsageError, match="other settings .*env.flops_budget"):
        refuse_changed_settings(path, {**saved, "env": {"flops_budget": 0.4}})


def test_reinforce_starting_at_the_budgets_uniform_ratio_leaves_no_layer_to_the_clamp():
    """init_keep None starts every layer's policy at the budget's uniform keep-ratio; a fixed
    0.6 under-spends the budget early and the clamp fills the last layer to 1.0."""
    env = toy_env(layers=4, budget=0.5)
    uniform = UniformPolicy(env).plan()
    starting = make_agent("reinforce", env, {"init_keep": None}, seed=0)
    played = run_episode(env, starting, seed=0, deterministic=True)["keep_ratios"]
    np.testing.assert_allclose(played, uniform, atol=0.05)
    assert max(played) < 0.9
    fixed = run_episode(env, make_agent("reinforce", env, {"init_keep": 0.6}, seed=0), seed=0,
                        deterministic=True)["keep_ratios"]
    assert fixed[-1] > 0.9 and max(fixed[:-1]) <= 0.7


def test_reinforce_starting_at_the_best_heuristic_plays_its_widths_first(tmp_path):
    """init_keep 'best' spends the first episodes on the heuristics' widths (inside the
    episode budget), then its policies choose the best one's widths; the start survives a
    save and load."""
    from agents.allocation import heuristic_starts

    env = toy_env(layers=4, budget=0.5)
    starts = heuristic_starts(env, by_widths=True)
    assert len(starts) >= 2  # else the start chooses nothing
    agent = make_agent("reinforce", env, {"init_keep": "best", "batch_episodes": 4}, seed=0)
    agent._play_heuristic_starts(env, 3)
    rewards = agent.start["rewards"]
    assert set(rewards) == set(starts) and agent.start["network"] == max(rewards, key=rewards.get)
    best = [len(k) / int(u) for k, u in zip(starts[agent.start["network"]], env.units, strict=True)]
    played = run_episode(env, agent, seed=0, deterministic=True)["keep_ratios"]
    np.testing.assert_allclose(played, best, atol=0.05)

    fresh = make_agent("reinforce", env, {"init_keep": "best", "batch_episodes": 4}, seed=0)
    monitor = SearchMonitor(env, show_progress=False)
    search(fresh, env, monitor, 10, tmp_path)
    assert monitor.counted_episodes == fresh.episodes_done == 10
    assert monitor.rewards[:len(starts)] == list(fresh.start["rewards"].values())
    assert load_agent(tmp_path / "agent.pt", env).start == fresh.start
