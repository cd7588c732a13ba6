"""Parallel episodes: the networks of a batch of episodes measured by worker processes, or
by Ray actors, with the same results as a serial run.

An episode's actions never depend on its reward, and only its last step measures the
pruned network, which is where the time goes. :func:`play_episodes` plays a batch in
three passes:

1. **plan**: every episode is played in this process with the measurement deferred
   (:meth:`PruningEnv.deferred_measurement`), so the agent draws its actions in the same
   order, from the same random streams, as in a serial run;
2. **measure**: the workers measure the networks the environment has not measured before
   (each distinct network once), each worker holding its own copy of the environment,
   built once from :meth:`PruningEnv.arguments` (model and data loaded once) with its own
   number of torch threads;
3. **replay**: every episode is played again through the agent's own (monitored)
   environment, whose last step now finds its record handed in (:meth:`PruningEnv.prefetch`).

Rewards, records, the best network and the checkpoints are therefore those of the serial
run with the same seed; only the wall-clock time differs. PPO plays the first pass itself,
as its SB3 rollout (:mod:`agents.ppo`), and hands the deferred reports to
:func:`measure_and_replay`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from prune_env.cli import UsageError

ActionFn = Callable[[int, np.ndarray], np.ndarray]
"""``action(layer, observation)``: an episode's policy (it may record what it drew)."""

RAY_INSTALL = "pip install -e '.[ray]'"

_worker_env = None  # the environment of this worker process


def _start_worker(arguments: dict[str, Any], threads: int, ready=None) -> None:
    """Build the worker's environment once (in a pool's worker process, or a Ray actor);
    then wait at ``ready``, a barrier for all workers and the process that started them."""
    global _worker_env
    from prune_env.env import PruningEnv

    torch.set_num_threads(threads)
    try:
        _worker_env = PruningEnv(**arguments)
    except BaseException:
        if ready is not None:
            ready.abort()  # the process that started the workers stops waiting, with an error
        raise
    if ready is not None:
        ready.wait()


def _replay(env: gym.Env, seed: int | None, actions: Sequence[np.ndarray]) -> dict:
    """Play ``actions`` from a reset with ``seed``; the last step's report."""
    remaining = iter(actions)
    return _play(env, lambda layer, obs: next(remaining), seed)


def _measure(plan: tuple[int | None, list[np.ndarray]]) -> tuple[dict, torch.nn.Module | None]:
    """The record of a planned episode and the network it measured (None on a cache hit)."""
    record = _replay(_worker_env, *plan)
    return record, _worker_env._last_model


class EpisodeWorkers:
    """``workers`` processes on this machine, each with its own copy of the environment and
    ``threads`` torch threads (default: the cores shared out). Use as a context manager,
    or :meth:`close` it."""

    def __init__(self, arguments: dict[str, Any], workers: int, threads: int | None = None):
        import multiprocessing

        self.workers = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        # spawn: a fresh interpreter per worker (forking a process that has run torch's thread pool can hang)
        context = multiprocessing.get_context("spawn")
        ready = context.Barrier(workers + 1)
        self._pool = context.Pool(workers, initializer=_start_worker,
                                  initargs=(_portable(arguments), self.threads, ready))
        try:
            ready.wait()  # every worker has built its environment
        except threading.BrokenBarrierError:
            self.close()
            raise RuntimeError("an episode worker could not build its environment (its error is printed above); "
                               "run with --workers 1 to see it here") from None

    def measure(self, plans: list[tuple[int | None, list[np.ndarray]]]) -> list[tuple[dict, torch.nn.Module | None]]:
        """The record and measured network of every plan (reset seed, actions), in order."""
        return self._pool.map(_measure, plans, chunksize=1) if plans else []

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> EpisodeWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def import_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--ray and --ray-address need Ray, an optional extra: {RAY_INSTALL}") from exc
    return ray


def init_ray(address: str | None = None, cpus: int | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local one with ``cpus`` CPUs (once
    per process)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


def ray_runtime_env() -> dict:
    """The project's settings (``PRUNE_ENV_*``: data and checkpoint folders) for Ray workers,
    which may have been started before they were set, or on other machines."""
    return {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("PRUNE_ENV_")}}


class _RayEpisodeWorker:
    """A Ray actor holding one copy of the environment."""

    def __init__(self, arguments: dict[str, Any], threads: int):
        _start_worker(arguments, threads)

    def measure(self, plan):
        return _measure(plan)

    def ready(self) -> bool:
        return True


class RayEpisodeWorkers(EpisodeWorkers):
    """The episode workers as Ray actors (``address``: an existing cluster; None: a local one
    started here), each reserving ``threads`` CPUs."""

    def __init__(self, arguments: dict[str, Any], workers: int, threads: int | None = None,
                 address: str | None = None):
        ray = import_ray()
        init_ray(address)
        self.workers = workers
        self.threads = threads or max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        actor = ray.remote(num_cpus=self.threads, runtime_env=ray_runtime_env())(_RayEpisodeWorker)
        shared = ray.put(_portable(arguments))
        self._actors = [actor.remote(shared, self.threads) for _ in range(workers)]
        self._ray = ray
        ray.get([a.ready.remote() for a in self._actors])  # every actor has built its environment

    def measure(self, plans):
        from ray.util import ActorPool

        return list(ActorPool(self._actors).map(lambda a, plan: a.measure.remote(plan), plans))

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []


def _portable(arguments: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments another process can use: a model given in-process travels on the CPU."""
    model = arguments.get("model")
    if model is not None and next(model.parameters(), torch.empty(0)).device.type != "cpu":
        import copy

        arguments = {**arguments, "model": copy.deepcopy(model).cpu()}
    return arguments


@dataclass(frozen=True)
class Parallelism:
    """How a run spreads its work: ``workers`` episode workers of ``threads`` torch threads
    each, as processes here or as Ray actors (``ray``: a local cluster; ``ray_address``: an
    existing one); in ``compare.py`` and ``sweep.py``, Ray tasks of ``threads`` CPUs each."""

    workers: int = 1
    threads: int | None = None
    ray: bool = False
    ray_address: str | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.uses_ray:
            import_ray()  # the clear error before anything starts

    @property
    def uses_ray(self) -> bool:
        return self.ray or bool(self.ray_address)

    @property
    def serial(self) -> bool:
        """Whether episodes are measured here, one after another (one local worker)."""
        return self.workers == 1 and not self.uses_ray

    def start(self, env: gym.Env) -> EpisodeWorkers | None:
        """Workers for ``env``'s episodes: None (serial, with ``threads`` here) for one local
        worker, else processes here or Ray actors."""
        if self.serial:
            if self.threads:
                torch.set_num_threads(self.threads)
            return None
        if self.uses_ray:
            return RayEpisodeWorkers(env.unwrapped.arguments(), self.workers, self.threads, self.ray_address)
        return EpisodeWorkers(env.unwrapped.arguments(), self.workers, self.threads)


class RunTasks:
    """Runs functions here, one after another, or as Ray tasks when ``parallel`` uses Ray
    (each with ``parallel.threads`` CPUs and torch threads, default 1)."""

    def __init__(self, parallel: Parallelism):
        self.parallel = parallel
        self._remote = None
        if parallel.uses_ray:
            ray = import_ray()
            init_ray(parallel.ray_address)
            self._ray = ray
            self._remote = ray.remote(num_cpus=parallel.threads or 1, runtime_env=ray_runtime_env())(_call_with_threads)

    def submit(self, fn, *args):
        """Start ``fn(*args)`` (here: run it now); a handle for :meth:`gather`."""
        if self._remote is None:
            return fn(*args)
        return self._remote.remote(self.parallel.threads or 1, fn, *args)

    def gather(self, handles: list) -> list:
        """The results of :meth:`submit` calls, in order."""
        return handles if self._remote is None else self._ray.get(handles)


def _call_with_threads(threads: int, fn, *args):
    torch.set_num_threads(threads)
    return fn(*args)


def add_parallel_arguments(parser, workers: bool = True, what: str = "the episode workers") -> None:
    """``--workers`` (when ``workers``), ``--threads``, ``--ray`` and ``--ray-address``."""
    if workers:
        parser.add_argument("--workers", type=int, default=1,
                            help="worker processes measuring each batch of episodes in parallel, each with its own "
                                 "copy of the model and data (default: 1, serial)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker or Ray task (default: the cores shared out among the "
                             "workers; 1 per Ray task)")
    parser.add_argument("--ray", action="store_true", help=f"run {what} on a local Ray cluster (needs {RAY_INSTALL})")
    parser.add_argument("--ray-address", default=None,
                        help="run them on the existing Ray cluster at this address (e.g. auto, or ray://head:10001)")


def parallelism_from_args(args) -> Parallelism:
    return Parallelism(getattr(args, "workers", 1), args.threads, args.ray, args.ray_address)


def play_episodes(env: gym.Env, actions: Sequence[ActionFn], seeds: Sequence[int | None],
                  workers: EpisodeWorkers | None = None) -> list[dict]:
    """Play one episode per ``actions[i]`` (reset with ``seeds[i]``) through ``env`` and its
    wrappers; the final reports, in order. With ``workers`` the networks are measured in
    parallel (see the module's docstring), with the same results."""
    if workers is None:
        return [_play(env, act, seed) for act, seed in zip(actions, seeds, strict=True)]
    base = env.unwrapped
    started = time.perf_counter()
    with base.deferred_measurement() as planned:
        for act, seed in zip(actions, seeds, strict=True):
            _play(base, act, seed)
    base.timings["parallel_main"] += time.perf_counter() - started
    return measure_and_replay(env, planned, workers)


def measure_and_replay(env: gym.Env, planned: list[dict], workers: EpisodeWorkers) -> list[dict]:
    """Passes 2 and 3 for the deferred reports ``planned`` (from
    :meth:`PruningEnv.deferred_measurement`, in the order played): the workers measure the
    networks not measured before, then each episode is played again through ``env``; the
    final reports, in order."""
    base = env.unwrapped
    started = time.perf_counter()
    to_measure, seen = [], set()
    for report in planned:
        seed, key = report["episode_seed"], report["network_key"]
        distinct = key if base.caches_measurements else (seed, key)
        if not base.is_measured(key) and distinct not in seen:
            seen.add(distinct)
            to_measure.append(report)
    measured = workers.measure([(r["episode_seed"], r["actions"]) for r in to_measure])
    for report, (record, model) in zip(to_measure, measured, strict=True):
        base.prefetch(report["episode_seed"], report["network_key"], record, model)
    waited = time.perf_counter()
    reports = [_replay(env, r["episode_seed"], r["actions"]) for r in planned]
    # the parallel overhead: what this process does alone, against the time the workers take
    base.timings["parallel_main"] += time.perf_counter() - waited
    base.timings["parallel_measure"] += waited - started
    return reports


def _play(env: gym.Env, act: ActionFn, seed: int | None) -> dict:
    obs, info = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(act(info["layer"], obs))
        if terminated or truncated:
            return info["report"]
