"""Channel-level actions (``action_mode="mask"``) and the REINFORCE channel agents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agents import make_policy
from agents.base import run_episode
from agents.search import SearchMonitor, load_agent, make_agent, restore_checkpoint, search
from prune_env.env import PruningEnv, mask_scores
from tests.helpers import ModelTarget, toy_env

USEFUL = [2, 5, 7, 10]


def _useful_units_model() -> nn.Sequential:
    """One prunable layer of 12 units; only ``USEFUL`` reach the output, and they have the
    smallest incoming weights, so the L1 criterion would drop exactly them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 2))
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[0].weight[USEFUL] *= 0.1
        model[2].weight.zero_()
        model[2].weight[:, USEFUL] = 3 * torch.randn(2, len(USEFUL))
    return model


class OutputFidelity(ModelTarget):
    """Metric: 1 - relative squared error against the unpruned model's outputs."""

    def evaluator(self, split="val", size=None, offset=0):
        reference = self.model_builder().eval()(self.inputs).detach()

        @torch.no_grad()
        def evaluate(model: nn.Module) -> float:
            error = ((model.eval()(self.inputs) - reference) ** 2).mean() / (reference**2).mean()
            return float(1 - error)
        return evaluate


def useful_units_env() -> PruningEnv:
    target = OutputFidelity(_useful_units_model, torch.randn(64, 4, generator=torch.Generator().manual_seed(1)))
    return PruningEnv(target, model=_useful_units_model(), flops_budget=4 / 12, action_mode="mask", min_keep=0.05)


def mask_env(layers: int = 2, budget: float | None = 0.5, **kwargs) -> PruningEnv:
    base = toy_env(layers, budget)
    return PruningEnv(base.target, model=base.model, flops_budget=budget,
                      reward="budget" if budget else "tradeoff", action_mode="mask", **kwargs)


def test_a_mask_over_the_allowed_count_loses_its_least_probable_units():
    env = mask_env()
    env.reset(seed=0)
    env.step(np.ones(40))  # the first layer may keep everything: the second pays
    lo, hi = env._bounds
    probs = np.linspace(0.1, 0.9, 40)
    env.step(mask_scores(np.ones(40), probs))
    assert len(env._kept[1]) == hi < 40
    np.testing.assert_array_equal(env._kept[1], np.arange(40 - hi, 40))  # the most probable stay


def test_a_mask_under_the_allowed_count_gains_the_most_probable_dropped_units():
    env = mask_env()
    env.reset(seed=0)
    lo, _ = env._bounds
    env.step(np.ones(40))
    lo, _ = env._bounds
    mask = np.zeros(40)
    mask[[0, 1]] = 1  # two units asked for, fewer than the budget allows
    probs = np.linspace(0.0, 1.0, 40)
    _, _, done, _, info = env.step(mask_scores(mask, probs))
    kept = info["report"]["kept_units"][1]
    assert len(kept) == lo > 2
    assert {0, 1} <= set(kept)
    assert set(kept) - {0, 1} == set(range(40 - (lo - 2), 40))  # filled with the most probable
    assert abs(info["report"]["flops_ratio"] - 0.5) <= 0.01


def test_a_plain_zero_one_mask_breaks_ties_by_the_criterion():
    env = mask_env(criterion="l1")
    env.reset(seed=0)
    env.step(np.ones(40))
    _, hi = env._bounds
    env.step(np.ones(40))
    expected = np.sort(np.argsort(-env.pruner.keep_scores(1, "l1").numpy(), kind="stable")[:hi])
    np.testing.assert_array_equal(env._kept[1], expected)


def test_the_mask_env_builds_exactly_the_units_kept_and_caches_by_units():
    env = mask_env(budget=None)
    report = run_episode(env, _Fixed(env, [[0, 3, 5, 7], list(range(10, 30))]))
    assert report["kept_units"] == [[0, 3, 5, 7], list(range(10, 30))] and report["keep_counts"] == [4, 20]
    model = env.last_model
    torch.testing.assert_close(model[0].weight, env.model[0].weight[[0, 3, 5, 7]])
    torch.testing.assert_close(model[2].weight, env.model[2].weight[10:30][:, [0, 3, 5, 7]])
    same_counts = run_episode(env, _Fixed(env, [[1, 3, 5, 7], list(range(10, 30))]))
    again = run_episode(env, _Fixed(env, [[0, 3, 5, 7], list(range(10, 30))]))
    assert env.cache_misses == 2 and env.cache_hits == 1
    assert again == report and same_counts["kept_units"][0] == [1, 3, 5, 7]
    assert torch.equal(env.last_model[0].weight, model[0].weight)  # rebuilt after the cache hit


class _Fixed:
    def __init__(self, env, kept):
        self.env, self.kept = env, kept

    def predict(self, observation, deterministic=True):
        scores = np.zeros(self.env.action_space.shape, dtype=np.float32)
        scores[self.kept[self.env.current_layer]] = 1.0
        return scores, None


@pytest.mark.parametrize("action, message", [
    (np.ones(39), "one score per unit"),
    (np.ones((2, 40)), "one score per unit"),
    (np.full(40, np.nan), "finite"),
    (np.full(40, 1.5), r"in \[0, 1\]"),
    (np.full(40, -0.2), r"in \[0, 1\]"),
])
def test_bad_mask_actions_are_refused(action, message):
    env = mask_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_each_agent_checks_the_action_mode():
    with pytest.raises(ValueError, match="action_mode='mask'"):
        make_agent("reinforce_channels", toy_env(budget=0.5))
    with pytest.raises(ValueError, match="action_mode='ratio'"):
        make_agent("reinforce", mask_env())


def test_the_channel_agent_learns_to_keep_the_useful_units():
    env = useful_units_env()
    before = run_episode(env, make_agent("reinforce_channels", env, {"init": "importance"}))
    assert not set(before["kept_units"][0]) & set(USEFUL)  # the criterion's choice: all wrong
    agent = make_agent("reinforce_channels", env, {"init": "uniform", "learning_rate": 0.2}, seed=0)
    agent.learn(400)
    report = run_episode(env, agent, deterministic=True)
    assert report["kept_units"] == [USEFUL] and report["reward"] > 0.99
    probs = agent.keep_probabilities()[0]
    assert set(np.argsort(-probs)[:len(USEFUL)]) == set(USEFUL)


def test_the_channel_agent_learns_to_keep_the_useful_units_with_width_noise():
    """Here the budget fixes the count, so the shift only adds variance: it takes more episodes."""
    env = useful_units_env()
    agent = make_agent("reinforce_channels", env, {"init": "uniform", "learning_rate": 0.2, "width_noise": 0.25}, seed=0)
    agent.learn(800)
    report = run_episode(env, agent, deterministic=True)
    assert report["kept_units"] == [USEFUL] and report["reward"] > 0.99


def test_width_noise_spreads_the_number_of_units_a_mask_keeps():
    """Without it the count of n Bernoulli draws barely moves; the shared shift moves whole layers."""
    logits = torch.zeros(256)

    def counts(width_noise: float) -> np.ndarray:
        from agents.reinforce_channels import ChannelAgent
        torch.manual_seed(0)
        dist = ChannelAgent(logits, width_noise)()
        return np.array([float(dist.sample()[:256].sum()) for _ in range(200)])

    plain, shifted = counts(0.0), counts(1.0)
    assert plain.std() < 12 and shifted.std() > 3 * plain.std()
    assert abs(shifted.mean() - 128) < 10  # the mean shift starts at 0: the same keep-ratio on average


def test_width_noise_learns_a_shift_mean_from_the_shift_log_probability():
    from agents.reinforce_channels import ChannelAgent
    agent = ChannelAgent(torch.zeros(8), width_noise=0.5)
    dist = agent()
    sample = torch.cat([torch.ones(8), torch.tensor([0.7])])
    dist.log_prob(sample).sum().backward()
    assert agent.shift_mean.grad is not None and agent.shift_mean.grad > 0  # a shift above the mean pulls it up
    assert torch.allclose(dist.probs_given(sample), torch.sigmoid(torch.full((8,), 0.7)))
    with pytest.raises(ValueError, match="width_noise"):
        make_agent("reinforce_channels", mask_env(), {"width_noise": -1.0})


def test_initialisations():
    env = mask_env(layers=2, budget=0.5)
    uniform = make_agent("reinforce_channels", env, {"init": "uniform"}).keep_probabilities()
    means = np.array([p.mean() for p in uniform])
    assert np.ptp(means) < 1e-6 and all(np.ptp(p) < 1e-6 for p in uniform)  # one ratio everywhere
    expected = np.round(means * env.units).astype(int)
    assert abs(env.flop_model.flops(expected) / env.flops_base - 0.5) < 0.03  # ... that meets the budget
    importance = make_agent("reinforce_channels", env, {"init": "importance"}).keep_probabilities()
    scores = env.pruner.keep_scores(0, env.criterion).numpy()
    assert np.corrcoef(importance[0], scores)[0, 1] > 0.9
    assert abs(importance[0].mean() - means[0]) < 0.05
    keep = make_agent("reinforce_channels", env, {"init": "keep"}).keep_probabilities()
    assert all(np.allclose(p, 0.95) for p in keep)


@pytest.mark.parametrize("first, second, width_noise", [(8, 8, 0.0), (4, 12, 0.0), (4, 12, 1.0)])  # whole batches
def test_save_load_and_resume_equal_one_run(first, second, width_noise, tmp_path):
    env = mask_env(layers=3)
    hparams = {"batch_episodes": 4, "init": "importance", "width_noise": width_noise}
    whole = make_agent("reinforce_channels", env, hparams, seed=2)
    whole_monitor = SearchMonitor(env, show_progress=False)
    whole.learn(first + second, env=whole_monitor)

    part_monitor = SearchMonitor(env, show_progress=False)
    search(make_agent("reinforce_channels", env, hparams, seed=2), env, part_monitor, first, tmp_path)
    resumed_monitor = SearchMonitor(env, show_progress=False)
    resumed = restore_checkpoint("reinforce_channels", env, resumed_monitor, tmp_path)
    search(resumed, env, resumed_monitor, first + second, tmp_path)
    assert resumed_monitor.rewards == whole_monitor.rewards
    assert resumed_monitor.best_record["kept_units"] == whole_monitor.best_record["kept_units"]
    for a, b in zip(resumed.keep_probabilities(), whole.keep_probabilities(), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded = load_agent(tmp_path / "agent_reinforce_channels.pt", env)
    assert loaded.hparams == whole.hparams and loaded.episodes_done == first + second


def test_a_saved_channel_run_is_rebuilt_unit_for_unit(tmp_path):
    """evaluate.py --policy RUN at the run's budget rebuilds the very units the run chose."""
    import json

    env = mask_env(layers=2)
    agent = make_agent("reinforce_channels", env, {"batch_episodes": 4}, seed=0)
    monitor = SearchMonitor(env, show_progress=False)
    search(agent, env, monitor, 8, tmp_path / "checkpoint")
    best = monitor.best_record
    (tmp_path / "config.json").write_text(json.dumps({"env": {"flops_budget": 0.5},
                                                      "agent_kind": "reinforce_channels"}))
    (tmp_path / "report.json").write_text(json.dumps(best))
    rebuilt_env, policy, mode = make_policy(str(tmp_path), env.target, {"flops_budget": 0.5, "model": env.model,
                                                                         "reward": "budget"})
    assert mode == "run_best" and rebuilt_env.action_mode == "mask"
    assert run_episode(rebuilt_env, policy)["kept_units"] == best["kept_units"]


def test_the_mask_env_passes_both_env_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = mask_env()
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)


@pytest.mark.parametrize("criterion, heuristic", [("l1", "l1"), ("activation", "ngf")])
def test_the_global_start_is_the_heuristic_network(criterion, heuristic):
    """``init: global`` starts, deterministically, at the l1 / ngf heuristic's very units."""
    from agents.heuristics import make_heuristic

    env = mask_env(layers=3, criterion=criterion)
    twin = PruningEnv(env.target, model=env.model, flops_budget=0.5, criterion=criterion)
    planned = run_episode(twin, make_heuristic(heuristic, twin))
    expected = [sorted(k.tolist()) for k in twin.pruner.keep_indices(planned["keep_counts"], criterion)]
    agent = make_agent("reinforce_channels", env, {"init": "global"})
    assert run_episode(env, agent, deterministic=True)["kept_units"] == expected


def test_the_best_start_measures_the_heuristic_networks_within_the_episode_budget(tmp_path):
    """``init: best`` spends its first episodes on the heuristics' networks, starts from the
    best by reward, and the search still plays exactly its episode budget."""
    from agents.allocation import heuristic_starts

    env = useful_units_env()
    starts = heuristic_starts(env)
    agent = make_agent("reinforce_channels", env, {"init": "best", "batch_episodes": 4}, seed=0)
    monitor = SearchMonitor(env, show_progress=False)
    search(agent, env, monitor, 10, tmp_path)
    assert monitor.counted_episodes == monitor.episodes == agent.episodes_done == 10
    assert set(agent.start["rewards"]) == set(starts)
    assert monitor.rewards[:len(starts)] == list(agent.start["rewards"].values())
    best = max(agent.start["rewards"], key=agent.start["rewards"].get)
    assert agent.start["network"] == best
    loaded = load_agent(tmp_path / "agent_reinforce_channels.pt", env)
    assert loaded.start == agent.start


def test_the_best_start_keeps_the_best_heuristic_network():
    from agents.allocation import heuristic_starts

    env = mask_env(layers=3, budget=0.5)
    agent = make_agent("reinforce_channels", env, {"init": "best"}, seed=0)
    agent._play_heuristic_starts(env, 3)
    kept = heuristic_starts(env)[agent.start["network"]]
    report = run_episode(env, agent, deterministic=True)
    assert report["kept_units"] == [sorted(k.tolist()) for k in kept]
    assert report["reward"] == max(agent.start["rewards"].values())
