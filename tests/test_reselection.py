"""Re-selecting the search's best few networks on validation examples it never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.callbacks import TopCandidatesCallback, candidate_key
from agents.search import SearchMonitor, make_agent, reselect, search
from prune_env.config import ConfigError, resolve_config
from prune_env.env import PruningEnv
from tests.helpers import ToyTarget


class TwoSlices(ToyTarget):
    """The search's slice (offset 0) prefers keep-ratios (0.85, 0.35); the examples after
    it prefer (0.35, 0.85): what the search saw and what it did not disagree."""

    def evaluator(self, split="val", size=None, offset=0):
        if offset == 0:
            return super().evaluator(split, size)
        other = ToyTarget(self.default_widths, (0.35, 0.85))
        return other.evaluator(split, size)


def _env() -> PruningEnv:
    torch.manual_seed(0)
    target = TwoSlices()
    return PruningEnv(target, model=target.build_model(), flops_budget=None, reward="tradeoff",
                      reward_kwargs={"weight": 0.0}, val_size=10)


def test_the_top_candidates_are_the_best_distinct_networks_by_reward():
    env = _env()
    top = TopCandidatesCallback(5)
    monitor = SearchMonitor(env, show_progress=False, callbacks=[top])
    search(make_agent("random_search", env, seed=0), env, monitor, 40)
    rewards = [r["reward"] for r in top.records]
    assert len(top.records) == 5 and rewards == sorted(rewards, reverse=True)
    assert len({candidate_key(r) for r in top.records}) == 5
    assert rewards[0] == monitor.best_record["reward"] and rewards[-1] >= sorted(monitor.rewards)[-5]
    restored = TopCandidatesCallback(5)
    restored.restore(top.state())
    assert restored.records == top.records


def _searched(top_k: int, seed: int, episodes: int):
    """A random search on the two-slice toy: env, its top candidates, monitor, held-out evaluator."""
    env = _env()
    top = TopCandidatesCallback(top_k)
    monitor = SearchMonitor(env, show_progress=False, callbacks=[top])
    search(make_agent("random_search", env, seed=seed), env, monitor, episodes)
    return env, top, monitor, env.target.evaluator("val", offset=env.val_size)


def test_reselection_keeps_the_best_on_the_unseen_examples():
    env, top, monitor, held_out = _searched(8, seed=1, episodes=60)
    model, record, summary = reselect(env, top.records, held_out)
    expected = max(top.records, key=lambda r: held_out(env.rebuild(r)))
    assert record["episode"] == expected["episode"] == summary["chosen_episode"]
    assert record["episode"] != monitor.best_record["episode"]  # the slices disagree: another network wins
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)][:-1] == record["keep_counts"]
    assert summary["metric_select_val"] == max(c["metric_select_val"] for c in summary["candidates"])
    np.testing.assert_allclose(summary["metric_select_val"], held_out(model))


def test_reselection_needs_a_search_slice_to_stay_apart_from(tmp_path):
    file = tmp_path / "whole_val.yaml"
    file.write_text("env:\n  val_size: null\nsearch:\n  reselect_top: 3\n")
    with pytest.raises(ConfigError, match="reselect_top needs env.val_size"):
        resolve_config("cnn_cifar10", config_file=file)
    assert resolve_config("cnn_cifar10", overrides={"search": {"reselect_top": 3}}).search.reselect_top == 3


class _ShiftFirstBias:
    """A stand-in evaluation mode: moves the copy's first bias (the network must not change)."""

    def prepare(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            next(m for m in model if isinstance(m, torch.nn.Linear)).bias.add_(5.0)

    def settings(self) -> dict:
        return {"evaluation": "shift"}


def test_reselection_measures_prepared_copies_and_returns_the_network_as_built():
    env, top, _, held_out = _searched(4, seed=2, episodes=30)
    prepare = _ShiftFirstBias()
    model, record, summary = reselect(env, top.records, held_out, prepare)

    def prepared_metric(r):
        copy_ = env.rebuild(r)
        prepare.prepare(copy_)
        return held_out(copy_)

    assert record["episode"] == max(top.records, key=prepared_metric)["episode"]
    np.testing.assert_allclose(summary["metric_select_val"], prepared_metric(record))
    built = env.rebuild(record)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), built.state_dict().values(), strict=True))
    assert summary["prepared_by"] == {"evaluation": "shift"}


def test_reselect_steps_need_reselect_top():
    with pytest.raises(ConfigError, match="set search.reselect_top"):
        resolve_config("cnn_cifar10", overrides={"search": {"reselect_finetune_steps": 100}})
    config = resolve_config("cnn_cifar10", overrides={"search": {"reselect_top": 3, "reselect_finetune_steps": 100}})
    assert config.search.reselect_finetune_steps == 100
