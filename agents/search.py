"""The search loop shared by every learning and search agent: monitor, checkpoints, resume.

:class:`SearchMonitor` wraps the environment and sees every finished episode, whichever
agent plays it: it keeps the best pruned network, logs to TensorBoard (``prune/...``),
drives the progress bar, and notes when the agent first beats a reference reward.
:func:`search` trains an agent in whole updates, checkpointing agent and monitor together
so that ``resume`` continues from the saved episode count without losing episodes.
"""

from __future__ import annotations

import copy
import random
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.callbacks import (
    BestModelCallback,
    CallbackList,
    FirstBeatCallback,
    ProgressBarCallback,
    SearchCallback,
    TensorBoardCallback,
)
from agents.ppo import PPOAgent
from agents.reinforce import ReinforceLayerAgents
from agents.reinforce_channels import ReinforceChannelAgents
from agents.searchers import Evolution, RandomSearch
from prune_env.env import PruningEnv
from prune_env.evaluation import EvaluationMode
from target_models.checkpoints import CheckpointError, atomic_save, interrupts_held

AGENTS = {"ppo": PPOAgent, "reinforce": ReinforceLayerAgents, "reinforce_channels": ReinforceChannelAgents,
          "random_search": RandomSearch, "evolution": Evolution}
AGENT_FILES = {"ppo": "agent.zip", "reinforce": "agent.pt", "reinforce_channels": "agent_reinforce_channels.pt",
               "random_search": "agent_random_search.pt", "evolution": "agent_evolution.pt"}


def action_mode_of(kind: str) -> str:
    """The environment action mode agent ``kind`` plays (``ratio`` or ``mask``)."""
    return getattr(AGENTS[kind], "action_mode", "ratio")


class SearchMonitor(gym.Wrapper):
    """Records every finished episode of a :class:`PruningEnv` and hands it to callbacks
    (:mod:`agents.callbacks`): by default the best network, a progress bar, TensorBoard
    (with ``log_dir``) and the first episode that reaches ``reference_reward``; add others,
    such as :class:`~agents.callbacks.EarlyStopping`, through ``callbacks``.

    With ``total_episodes`` set, only the first ``total_episodes`` episodes are candidates
    for the best network: agents that update in whole rollouts (PPO) may play a few more,
    which are counted in ``episodes`` but never chosen, so every searcher of a comparison
    gets exactly the same number of measured candidates."""

    def __init__(self, env: PruningEnv, log_dir: str | Path | None = None, total_episodes: int | None = None,
                 reference_reward: float | None = None, show_progress: bool = True,
                 callbacks: Iterable[SearchCallback] = ()):
        super().__init__(env)
        self.limit = total_episodes
        self.episodes, self.seconds = 0, 0.0
        self.rewards: list[float] = []
        self.stop_requested = False
        defaults: list[SearchCallback] = [
            BestModelCallback(), ProgressBarCallback(total_episodes, f"search {env.target.name}", show_progress)]
        if log_dir is not None:
            defaults.append(TensorBoardCallback(log_dir))
        if reference_reward is not None:
            defaults.append(FirstBeatCallback(reference_reward))
        self.callbacks = CallbackList([*defaults, *callbacks])
        self.callbacks.init_callback(self)
        self._started = time.perf_counter()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and not info["report"].get("deferred"):
            self._record(info["report"])  # a deferred episode is recorded when it is replayed, measured
        return obs, reward, terminated, truncated, info

    @property
    def counted_episodes(self) -> int:
        """Episodes that were candidates for the best network (at most ``total_episodes``)."""
        return len(self.rewards)

    @property
    def best_record(self) -> dict[str, Any] | None:
        return self.callbacks.find(BestModelCallback).best_record

    @property
    def best_model(self) -> torch.nn.Module | None:
        return self.callbacks.find(BestModelCallback).best_model

    @property
    def first_beat(self) -> dict[str, float] | None:
        found = self.callbacks.find(FirstBeatCallback)
        return None if found is None else found.first_beat

    def _record(self, record: dict) -> None:
        self.episodes += 1
        if self.limit is not None and len(self.rewards) >= self.limit:
            return  # beyond the episode budget: played to finish a rollout, never a candidate
        self.rewards.append(float(record["reward"]))
        if not self.callbacks.on_episode(record):
            self.stop_requested = True

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self._started

    def state(self) -> dict:
        """What a checkpoint needs to resume the search (loadable with ``weights_only``)."""
        return {"episodes": self.episodes, "seconds": self.elapsed(), "rewards": self.rewards,
                "stop_requested": self.stop_requested, "callbacks": self.callbacks.state()}

    def restore(self, state: dict) -> None:
        self.episodes, self.seconds, self.rewards = state["episodes"], state["seconds"], list(state["rewards"])
        self.stop_requested = state.get("stop_requested", False)
        self.callbacks.restore(state["callbacks"])
        self._started = time.perf_counter()

    def close(self) -> None:
        self.callbacks.on_search_end()


def make_agent(kind: str, env: PruningEnv, hparams: dict | None = None, seed: int = 0):
    if kind not in AGENTS:
        raise ValueError(f"unknown agent {kind!r}; choose one of: {', '.join(AGENTS)}")
    return AGENTS[kind](env, seed=seed, **(hparams or {}))


def agent_file(path: str | Path) -> tuple[str, Path]:
    """The kind and file of a saved agent, given its file or a run folder that holds one;
    a :class:`CheckpointError` in one line otherwise. Reads only the file's header (PPO) or
    its small ``.pt`` dictionary: a cheap check before any work starts."""
    path = Path(path).expanduser()
    expected = (f"expected a run folder of scripts/train_agent.py or its checkpoint/"
                f"{{{','.join(AGENT_FILES.values())}}}")
    if path.is_dir():
        found = [path / "checkpoint" / f for f in AGENT_FILES.values() if (path / "checkpoint" / f).exists()]
        if not found:
            files = ", ".join(f"checkpoint/{f}" for f in AGENT_FILES.values())
            raise CheckpointError(f"{path} holds no saved agent ({files}); train one with scripts/train_agent.py")
        path = found[0]
    if not path.exists():
        raise CheckpointError(f"no agent at {path}; train one with scripts/train_agent.py")
    if path.suffix == ".zip":
        if not zipfile.is_zipfile(path) or "policy.pth" not in zipfile.ZipFile(path).namelist():
            raise CheckpointError(f"{path} is not a saved PPO agent (no stable-baselines3 policy inside); {expected}")
        return "ppo", path
    if path.suffix != ".pt":
        raise CheckpointError(f"{path} is not a saved agent; {expected}")
    return saved_kind(path), path


def load_agent(path: str | Path, env: PruningEnv):
    """A saved agent from its file, or from a run folder that holds one."""
    kind, path = agent_file(path)
    return AGENTS[kind].load(path, env)


def saved_kind(path: str | Path) -> str:
    """The agent kind stored in a ``.pt`` agent checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the message of torch's error is long and advises unsafe loading: not repeated
        raise CheckpointError(f"cannot read {path} as a saved agent ({exc.__class__.__name__}); it is not an agent "
                              "checkpoint written by scripts/train_agent.py") from exc
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind not in AGENTS or kind == "ppo":
        raise CheckpointError(f"{path} holds no known agent (kind {kind!r}); expected one of: "
                              f"{', '.join(k for k in AGENTS if k != 'ppo')}")
    return kind


def search(agent, env: PruningEnv, monitor: SearchMonitor, episodes: int, checkpoint_dir: Path | None = None) -> None:
    """Train ``agent`` until ``monitor`` has seen ``episodes`` episodes.

    Agent and monitor are checkpointed together after every update, the only points where
    both agree on the episode count; an interruption loses at most the episodes of the
    update in progress, and ``--resume`` continues from the count saved last."""

    def after_update(_agent) -> bool:
        if checkpoint_dir is not None:
            save_checkpoint(agent, monitor, checkpoint_dir)
        return not monitor.stop_requested  # False stops the agent's learn loop

    remaining = episodes - monitor.counted_episodes
    if remaining > 0 and not monitor.stop_requested:
        agent.learn(remaining, env=monitor, callback=after_update)


def find_network(env: PruningEnv, agent: str = "random_search", episodes: int = 100, seed: int = 0,
                 hparams: dict | None = None, show_progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Run searcher ``agent`` for ``episodes`` episodes on ``env`` and return the best
    network it found (physically pruned, as the evaluation mode left it) and its episode
    record; ``scripts/train_agent.py`` does the same with checkpoints, reports and exports."""
    if agent in AGENTS and action_mode_of(agent) != env.action_mode:
        raise ValueError(f"{agent} plays action_mode={action_mode_of(agent)!r}; build the env with it")
    searcher = make_agent(agent, env, hparams, seed=seed)  # an unknown name: a clear error here
    monitor = SearchMonitor(env, total_episodes=episodes, show_progress=show_progress)
    try:
        search(searcher, env, monitor, episodes)
    finally:
        monitor.close()
    return best_of(monitor, env, searcher)


def save_checkpoint(agent, monitor: SearchMonitor, checkpoint_dir: Path) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with interrupts_held():  # the agent and the search state always describe the same episode
        agent.save(checkpoint_dir / AGENT_FILES[agent.name])
        atomic_save({**monitor.state(), "random_state": random_state()}, checkpoint_dir / "search_state.pt")


def random_state() -> dict:
    """The global generators' states (torch, numpy, Python), loadable with ``weights_only``:
    a resumed search draws what the uninterrupted one would have drawn next."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_random_state(state: dict) -> None:
    """Restore :func:`random_state` (after loading an agent: stable-baselines3 reseeds on load)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def restore_checkpoint(kind: str, env: PruningEnv, monitor: SearchMonitor, checkpoint_dir: Path):
    """The agent and monitor saved in ``checkpoint_dir``."""
    agent_path, state_path = checkpoint_dir / AGENT_FILES[kind], checkpoint_dir / "search_state.pt"
    if not agent_path.exists() or not state_path.exists():
        raise CheckpointError(f"nothing to resume in {checkpoint_dir}: no {agent_path.name} and search_state.pt "
                              "(the run stopped before its first checkpoint); start it again with --force")
    agent = AGENTS[kind].load(agent_path, env)
    state = torch.load(state_path, weights_only=True)
    monitor.restore(state)
    if "random_state" in state:  # checkpoints written before 2026-11-30 have none
        set_random_state(state["random_state"])
    if agent.episodes_done != monitor.episodes:
        raise CheckpointError(f"{checkpoint_dir}: agent ({agent.episodes_done}) and search ({monitor.episodes}) "
                              "episode counts disagree")
    return agent


def best_of(monitor: SearchMonitor, env: PruningEnv, agent) -> tuple[torch.nn.Module, dict]:
    """The best network among the counted episodes (the agent's deterministic policy only
    when no episode was played: an extra episode would break equal episode budgets)."""
    from agents.base import run_episode

    if monitor.best_record is None:
        record = run_episode(env, agent, seed=0, deterministic=True)
        return env.last_model, {**record, "episode": "deterministic"}
    return monitor.best_model, monitor.best_record


def reselect(env: PruningEnv, records: list[dict], evaluate,
             prepare: EvaluationMode | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """Re-measure the networks of ``records`` (the search's best few) with ``evaluate``, on
    data the search never saw, and return the best by that figure: its model, its record
    and what was measured (the ``reselection`` entry of ``report.json``). With ``prepare``
    (e.g. a ``finetune`` mode of a hundred steps: a costlier, more faithful measurement than
    the search could afford per episode), a copy of each network is prepared further before
    it is measured, on top of the env's own evaluation mode (the steps add to a ``finetune``
    mode's); the network returned is the one the episode measured, as the search built it."""
    if not records:
        raise ValueError("no candidates to re-select from")
    measured = []
    for record in records:
        model = env.rebuild(record)
        judged = model
        if prepare is not None:
            judged = copy.deepcopy(model)
            prepare.prepare(judged)
        measured.append((evaluate(judged), record, model))
    best = max(range(len(measured)), key=lambda i: measured[i][0])  # the first on a tie: the best by reward
    metric, record, model = measured[best]
    summary = {"candidates": [{"episode": r["episode"], "reward": r["reward"], "metric_select_val": m}
                              for m, r, _ in measured],
               "chosen_episode": record["episode"], "metric_select_val": metric,
               "prepared_by": None if prepare is None else prepare.settings()}
    return model, record, summary


def mean_reward(rewards: list[float], last: int = 20) -> float:
    return float(np.mean(rewards[-last:])) if rewards else float("nan")
