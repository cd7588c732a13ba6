"""Search callbacks: composable, saved with the search, and able to stop it."""

from __future__ import annotations

import pytest

from agents.callbacks import BestModelCallback, EarlyStopping, SearchCallback
from agents.search import SearchMonitor, make_agent, restore_checkpoint, search
from tests.helpers import toy_env


class Counter(SearchCallback):
    key = "counter"

    def __init__(self):
        super().__init__()
        self.seen: list[float] = []

    def _on_episode(self, record):
        self.seen.append(record["reward"])
        return True

    def state(self):
        return {"seen": self.seen}

    def restore(self, state):
        self.seen = list(state["seen"])


def test_every_callback_sees_every_counted_episode():
    env = toy_env(layers=2, budget=0.5)
    counter = Counter()
    monitor = SearchMonitor(env, total_episodes=10, show_progress=False, callbacks=[counter])
    search(make_agent("random_search", env, {"batch_episodes": 4}, seed=0), env, monitor, episodes=10)
    assert counter.seen == monitor.rewards and len(counter.seen) == 10
    assert monitor.best_record["reward"] == max(counter.seen)


def test_early_stopping_ends_the_search_after_patience_without_improvement(tmp_path):
    env = toy_env(layers=2, budget=0.5)
    stop = EarlyStopping(patience=3)
    monitor = SearchMonitor(env, total_episodes=200, show_progress=False, callbacks=[stop])
    agent = make_agent("random_search", env, {"batch_episodes": 2}, seed=0)
    search(agent, env, monitor, episodes=200, checkpoint_dir=tmp_path)
    rewards = monitor.rewards
    assert monitor.stop_requested and stop.stopped_at is not None and len(rewards) < 200
    best_at = rewards.index(max(rewards))
    assert stop.stopped_at == best_at + 1 + 3  # three episodes without improvement after the best
    assert len(rewards) - stop.stopped_at < 2  # the search ends with the update in progress
    # the stop is saved: a resumed search does not play on
    resumed_monitor = SearchMonitor(env, total_episodes=200, show_progress=False, callbacks=[EarlyStopping(3)])
    resumed = restore_checkpoint("random_search", env, resumed_monitor, tmp_path)
    search(resumed, env, resumed_monitor, episodes=200, checkpoint_dir=tmp_path)
    assert resumed_monitor.rewards == rewards and resumed_monitor.callbacks.find(BestModelCallback).best_model


def test_callbacks_need_distinct_keys_and_patience():
    env = toy_env(layers=2, budget=0.5)
    with pytest.raises(ValueError, match="distinct keys"):
        SearchMonitor(env, show_progress=False, callbacks=[Counter(), Counter()])
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)
