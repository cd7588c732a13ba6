"""Search callbacks in stable-baselines3's shape: small objects that each watch every
finished episode of a search for one purpose, composed with :class:`CallbackList`.

A callback is initialised with the :class:`~agents.search.SearchMonitor` that drives it,
sees each counted episode's record in :meth:`SearchCallback.on_episode` (returning
``False`` asks the search to stop after the current update, as SB3's ``_on_step`` does),
and saves and restores what it needs to resume through :meth:`state` / :meth:`restore`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class SearchCallback:
    """Base class: override ``_on_episode`` (and ``state``/``restore`` when it keeps state)."""

    key: str = "callback"
    """Name of this callback's entry in a saved search state."""

    def __init__(self) -> None:
        self.monitor = None

    def init_callback(self, monitor) -> None:
        self.monitor = monitor

    def on_episode(self, record: dict[str, Any]) -> bool:
        """Called once per counted episode; ``False`` asks the search to stop."""
        return self._on_episode(record)

    def _on_episode(self, record: dict[str, Any]) -> bool:
        return True

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state` (``self.monitor`` is set)."""

    def on_search_end(self) -> None:
        """Release files, bars and writers."""


class CallbackList(SearchCallback):
    """Several callbacks as one; the search stops when any of them asks."""

    key = "callbacks"

    def __init__(self, callbacks: Iterable[SearchCallback]):
        super().__init__()
        self.callbacks = list(callbacks)
        keys = [c.key for c in self.callbacks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"callbacks need distinct keys to be saved, got {keys}")

    def init_callback(self, monitor) -> None:
        super().init_callback(monitor)
        for c in self.callbacks:
            c.init_callback(monitor)

    def _on_episode(self, record):
        return all([c.on_episode(record) for c in self.callbacks])  # every callback sees every episode

    def state(self):
        return {c.key: c.state() for c in self.callbacks}

    def restore(self, state):
        for c in self.callbacks:
            if c.key in state:
                c.restore(state[c.key])

    def on_search_end(self):
        for c in self.callbacks:
            c.on_search_end()

    def find(self, cls: type) -> SearchCallback | None:
        return next((c for c in self.callbacks if isinstance(c, cls)), None)


class BestModelCallback(SearchCallback):
    """Keeps the record and a copy of the pruned network of the best episode so far."""

    key = "best"

    def __init__(self) -> None:
        super().__init__()
        self.best_record: dict[str, Any] | None = None
        self.best_model = None

    def _on_episode(self, record):
        if self.best_record is None or record["reward"] > self.best_record["reward"]:
            self.best_record = {**record, "episode": self.monitor.counted_episodes}
            self.best_model = copy.deepcopy(self.monitor.env.unwrapped.last_model)
        return True

    def state(self):
        return {"best_record": self.best_record,
                "best_model": None if self.best_model is None else self.best_model.state_dict()}

    def restore(self, state):
        self.best_record = state["best_record"]
        if state["best_model"] is not None:
            # the pruned architecture, rebuilt by surgery (works for any model), then its weights
            self.best_model = self.monitor.env.unwrapped.pruner.prune_counts(self.best_record["keep_counts"])
            self.best_model.load_state_dict(state["best_model"])
            self.best_model.eval()


def candidate_key(record: dict[str, Any]) -> tuple:
    """The network of an episode record, as the environment's cache keys it."""
    from prune_env.env import network_key

    return network_key(record["keep_counts"], record.get("kept_units"))


class TopCandidatesCallback(SearchCallback):
    """Keeps the records of the ``k`` best distinct networks by reward (the earlier episode
    on a tie), for a final re-selection on held-out data (:func:`agents.search.reselect`)."""

    key = "top"

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.records: list[dict[str, Any]] = []

    def _on_episode(self, record):
        key = candidate_key(record)
        if any(candidate_key(r) == key for r in self.records):
            return True
        self.records.append({**record, "episode": self.monitor.counted_episodes})
        self.records.sort(key=lambda r: -r["reward"])  # stable: the earlier episode first on a tie
        del self.records[self.k:]
        return True

    def state(self):
        return {"records": self.records}

    def restore(self, state):
        self.records = list(state["records"])


class FirstBeatCallback(SearchCallback):
    """Notes the first episode (and search seconds) whose reward reaches ``reference_reward``
    (for example the best heuristic's)."""

    key = "first_beat"

    def __init__(self, reference_reward: float):
        super().__init__()
        self.reference_reward = float(reference_reward)
        self.first_beat: dict[str, float] | None = None

    def _on_episode(self, record):
        if self.first_beat is None and record["reward"] >= self.reference_reward:
            self.first_beat = {"episode": self.monitor.episodes, "seconds": round(self.monitor.elapsed(), 2)}
        return True

    def state(self):
        return {"first_beat": self.first_beat}

    def restore(self, state):
        self.first_beat = state["first_beat"]


class TensorBoardCallback(SearchCallback):
    """Logs reward, metric, FLOPs ratio, best reward and keep-ratios under ``prune/``."""

    key = "tensorboard"

    def __init__(self, log_dir: str | Path):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def _on_episode(self, record):
        w, n = self.writer, self.monitor.episodes
        w.add_scalar("prune/reward", record["reward"], n)
        w.add_scalar("prune/metric", record["metric_pruned_val"], n)
        w.add_scalar("prune/flops_ratio", record["flops_ratio"], n)
        w.add_scalar("prune/best_reward", max(self.monitor.rewards), n)
        for i, ratio in enumerate(record["keep_ratios"]):
            w.add_scalar(f"prune/keep_ratio_{i}", ratio, n)
        return True

    def on_search_end(self):
        self.writer.close()


class ProgressBarCallback(SearchCallback):
    """A tqdm bar over the counted episodes, with the last and best reward."""

    key = "progress"

    def __init__(self, total: int | None, desc: str = "search", show: bool = True):
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="episode", disable=not show, dynamic_ncols=True)

    def _on_episode(self, record):
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{record['reward']:.4f}", best=f"{max(self.monitor.rewards):.4f}")
        return True

    def restore(self, state):
        self.bar.update(self.monitor.counted_episodes)

    def on_search_end(self):
        self.bar.close()


class EarlyStopping(SearchCallback):
    """Asks the search to stop when the best reward has not improved by more than
    ``min_delta`` for ``patience`` counted episodes."""

    key = "early_stop"

    def __init__(self, patience: int, min_delta: float = 0.0):
        super().__init__()
        if patience < 1:
            raise ValueError(f"patience must be at least 1 episode, got {patience}")
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.since_best = 0
        self.stopped_at: int | None = None

    def _on_episode(self, record):
        reward = float(record["reward"])
        if self.best is None or reward > self.best + self.min_delta:
            self.best, self.since_best = reward, 0
        else:
            self.since_best += 1
        if self.since_best >= self.patience:
            self.stopped_at = self.stopped_at or self.monitor.counted_episodes
            return False
        return True

    def state(self):
        return {"best": self.best, "since_best": self.since_best, "stopped_at": self.stopped_at}

    def restore(self, state):
        self.best, self.since_best, self.stopped_at = state["best"], state["since_best"], state["stopped_at"]
