"""Neuroplastic Expansion for TD3: masks, the small-to-large scheduler, dormancy, replay
window, NGF units, checkpoints, and the command line. Real stable-baselines3 TD3 on
Gymnasium's Pendulum with tiny networks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from agents.neuroplastic import (
    NEConfig,
    TopologyCallback,
    WindowReplayBuffer,
    dormancy,
    td3_networks,
)
from agents.sparse_masks import SparseLayers, erdos_renyi_densities
from experiments.neuroplastic import TD3RunConfig, _make_model, run_td3
from tests.helpers import REPO, script_env

QUICK = {"steps": 1500, "learning_starts": 300, "eval_every": 500, "eval_episodes": 1, "checkpoint_every": 500,
         "hidden": (16, 16)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def masked_weights(model, callback: TopologyCallback) -> list[torch.Tensor]:
    """Every weight the masks switch off, in the online and the target networks."""
    out = []
    for (n, i), mask in zip(callback.index, callback.sparse.masks, strict=True):
        net, target, _ = td3_networks(model)[n]
        out += [net[i].weight[~mask], target[i].weight[~mask]]
    return out


def learn(tmp_path, method: str, steps: int = 1500, **topology):
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    run = TD3RunConfig(**{**QUICK, "steps": steps})
    model = _make_model(run, Monitor(gym.make(run.env_id)), tmp_path)
    model.initial_weights = {k: v.clone() for k, v in model.policy.state_dict().items()}
    callback = TopologyCallback(NEConfig(method=method, **topology), steps, seed=0)
    model.learn(total_timesteps=steps, callback=callback)
    return model, callback


def test_erdos_renyi_meets_the_sparsity_and_caps_dense_layers():
    shapes = [(256, 3), (256, 256), (1, 256)]
    densities = erdos_renyi_densities(shapes, 0.8)
    sizes = np.array([o * i for o, i in shapes])
    assert (densities <= 1).all()
    assert densities[0] == 1.0 and densities[2] == 1.0  # thin layers would exceed 1: dense
    assert (densities * sizes).sum() / sizes.sum() == pytest.approx(0.2)
    assert erdos_renyi_densities(shapes, 0.0).tolist() == [1.0, 1.0, 1.0]


def test_masked_weights_stay_exactly_zero_through_many_optimiser_steps(tmp_path):
    model, callback = learn(tmp_path, "static", steps=1500, final_sparsity=0.5)
    assert model._n_updates > 1000  # over a thousand Adam steps of actor and critic
    assert callback.sparsity() == pytest.approx(0.5, abs=0.02)
    assert all((w == 0).all() for w in masked_weights(model, callback))
    # the active weights did train
    state = model.policy.state_dict()
    changed = [k for k in state if k.endswith("weight") and not torch.equal(state[k], model.initial_weights[k])]
    assert len(changed) == len(model.initial_weights) // 2  # every weight matrix, online and target


def test_gradients_are_masked_unless_dense_gradients_are_asked_for():
    layer = nn.Linear(4, 3)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    sparse = SparseLayers([layer], [opt], [None], np.array([0.5]), np.random.default_rng(0))
    layer(torch.randn(8, 4)).sum().backward()
    assert (layer.weight.grad[~sparse.masks[0]] == 0).all()
    layer.weight.grad = None
    with sparse.dense_gradients():
        layer(torch.randn(8, 4)).sum().backward()
    assert (layer.weight.grad[~sparse.masks[0]] != 0).any()  # potential gradients of inactive weights
    opt.step()
    assert (layer.weight[~sparse.masks[0]] == 0).all()  # the post-step hook re-applies the mask


def test_small_to_large_grows_from_initial_to_final_sparsity(tmp_path):
    model, callback = learn(tmp_path, "ne", steps=1500, delta=100, stop_fraction=0.8, initial_sparsity=0.8,
                            final_sparsity=0.3)
    # updates at steps 400..1200 (after learning starts, before the stop)
    assert callback.updates == 9
    assert callback.sparsity() == pytest.approx(0.3, abs=0.03)
    assert callback.target_sparsity(300) == 0.8 and callback.target_sparsity(1200) == pytest.approx(0.3)
    assert callback.target_sparsity(750) == pytest.approx(0.55)  # linear from the first training step
    assert callback.zeta(300) == pytest.approx(0.2) and callback.zeta(1200) == pytest.approx(0.0)
    assert all((w == 0).all() for w in masked_weights(model, callback))


def test_growth_picks_the_largest_potential_gradients(tmp_path):
    model, callback = learn(tmp_path, "ne", steps=600, delta=10_000, initial_sparsity=0.8, final_sparsity=0.3)
    data = model.replay_buffer.sample(256)
    torch.manual_seed(1)  # the same target-policy noise in both gradient computations
    grads = callback._potential_gradients(data)
    before = [m.clone() for m in callback.sparse.masks]
    callback.config.dormant_pruning = False
    torch.manual_seed(1)
    callback.topology_update(data, step=480)  # 0.8 * 600: the stop, so the final sparsity, zeta 0
    for i, (old, new) in enumerate(zip(before, callback.sparse.masks, strict=True)):
        grown = new & ~old
        assert (old & ~new).sum() == 0  # zeta is 0 at the stop: nothing pruned
        if grown.any() and (~new).any():
            assert grads[i][grown].min() >= grads[i][~new].max()


def test_dormancy_counts_units_below_tau_and_the_active_fraction():
    mean_abs = torch.tensor([0.0, 0.01, 1.0, 2.99])  # layer mean 1.0: normalised = same values
    positive = torch.tensor([0.0, 0.5, 1.0, 1.0])
    scores = [(0, 0, mean_abs, positive), (1, 0, torch.ones(4), torch.ones(4))]
    d = dormancy(scores, tau=0.025)
    assert d["actor_dormant_ratio"] == 0.5 and d["actor_fau"] == pytest.approx(2.5 / 4)
    assert d["critic_dormant_ratio"] == 0.0 and d["critic_fau"] == 1.0


def test_the_replay_window_samples_only_recent_transitions():
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    buffer = WindowReplayBuffer(100, env.observation_space, env.action_space)
    for t in range(100):
        obs = np.full((1, 3), t, dtype=np.float32)
        buffer.add(obs, obs, np.zeros((1, 1), np.float32), np.zeros(1), np.zeros(1), [{}])
    assert set(buffer.sample(500).observations[:, 0].int().tolist()) == set(range(100))
    buffer.window = 10
    assert set(buffer.sample(500).observations[:, 0].int().tolist()) <= set(range(90, 100))


def test_ngf_keeps_the_most_active_units_of_every_hidden_layer(tmp_path):
    model, callback = learn(tmp_path, "ngf", steps=600, ngf_at=0.5, ngf_keep=0.75)
    assert callback.ngf_done
    for n in range(len(td3_networks(model))):
        first = callback.sparse.masks[callback.index.index((n, 0))]
        alive = first.any(dim=1)
        assert int(alive.sum()) == 12  # 0.75 of 16 units
        second = callback.sparse.masks[callback.index.index((n, 2))]
        assert not second[:, ~alive].any()  # their outgoing connections are cut too


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    from experiments.neuroplastic import _Checkpoint

    ne, run = NEConfig(method="ne", delta=100), TD3RunConfig(**QUICK)
    save = _Checkpoint.save

    def save_then_stop(self, model, state):
        save(self, model, state)
        if model.num_timesteps == 1000:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_td3(run, ne, tmp_path, show_progress=False)
    monkeypatch.setattr(_Checkpoint, "save", save)
    model, saved = _Checkpoint(tmp_path / "checkpoint").load(Monitor(gym.make(run.env_id)), "cpu")
    assert model.num_timesteps == 1000 and model.replay_buffer.size() == 1000  # every step stored
    weights = {k: v.clone() for k, v in model.policy.state_dict().items()}
    callback = TopologyCallback(ne, run.steps, state=saved["topology"])
    callback.init_callback(model)
    callback.on_training_start({}, {})
    assert all(torch.equal(a, b) for a, b in zip(callback.sparse.masks, saved["topology"]["masks"]["masks"],
                                                 strict=True))
    assert all(torch.equal(v, model.policy.state_dict()[k]) for k, v in weights.items())  # nothing zeroed

    resumed = run_td3(run, ne, tmp_path, resume=True, show_progress=False)
    assert resumed["steps"] == 1500
    assert [h["step"] for h in resumed["history"]] == [500, 1000, 1500]
    assert resumed["topology_updates"] > saved["topology"]["updates"]  # counted on from the checkpoint
    assert resumed["final_sparsity"] == pytest.approx(0.25, abs=0.03)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["final_sparsity"] == pytest.approx(resumed["final_sparsity"])
    with pytest.raises(ValueError, match="other settings"):
        run_td3(run, NEConfig(method="ne", delta=200), tmp_path, resume=True, show_progress=False)


def test_command_line_refuses_bad_input_clearly(tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, "scripts/train_neuroplastic.py", *flags, "--root", str(tmp_path)],
                              cwd=REPO, env=script_env(tmp_path), capture_output=True, text=True, timeout=120)

    result = run("--env", "CartPole-v1")
    assert result.returncode != 0 and "continuous (Box) actions" in result.stderr
    result = run("--methods", "ne,grow")
    assert result.returncode != 0 and "unknown ['grow']" in result.stderr
    result = run("--final-sparsity", "1.5")
    assert result.returncode != 0 and "final_sparsity must lie in [0, 1)" in result.stderr
