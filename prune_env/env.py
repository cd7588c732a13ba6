"""``PruningEnv``: pruning a pretrained network, one layer per step."""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from torch import nn

from prune_env.bisection import largest_int, smallest_int
from prune_env.cost import count_params
from prune_env.evaluation import make_evaluation
from prune_env.importance import get_criterion
from prune_env.layer_types import OBSERVED_KINDS, LayerType
from prune_env.pruner import make_pruner
from prune_env.rewards import get_reward
from prune_env.surgery import keep_count
from target_models import Target, get_target

N_FEATURES = 22
ACTION_MODES = ("ratio", "mask")
KEEP_THRESHOLD = 0.5
"""In ``mask`` mode, units scoring at least this are asked for."""


def network_key(keep_counts, kept_units=None) -> tuple:
    """What makes two episodes the same network: the kept unit indices when the episode
    chose them (``mask`` mode), else the kept unit counts (the criterion picks the units)."""
    if kept_units is not None:
        return tuple(tuple(int(i) for i in k) for k in kept_units)
    return tuple(int(c) for c in keep_counts)


def allowed_counts(units: int, floor: int, round_to: int | None) -> np.ndarray:
    """The unit counts a layer of ``units`` may keep, in ascending order: every count from
    ``floor`` on, or with ``round_to=N`` the multiples of N from the first at least
    ``floor``, and all ``units`` (a layer of fewer than N units keeps them all)."""
    if not round_to or round_to == 1:
        return np.arange(floor, units + 1)
    first = -(-floor // round_to) * round_to
    return np.unique(np.append(np.arange(first, units + 1, round_to), units))


def mask_scores(mask: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """A ``mask``-mode action from a 0/1 keep ``mask`` and the keep probabilities it was
    drawn from: kept units score in [0.5, 1], dropped ones in [0, 0.5), each ordered by its
    probability, so the budget trims the least probable kept units and fills with the most
    probable dropped ones."""
    mask, probs = np.asarray(mask, dtype=np.float64), np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    return np.where(mask > 0.5, KEEP_THRESHOLD + 0.5 * probs, 0.4999 * probs).astype(np.float32)


class UnreachableBudgetError(ValueError):
    """A budget below what the smallest network the env may build (``min_keep``, ``round_to``) costs."""


class PruningEnv(gym.Env):
    """Prune a pretrained target network layer by layer; reward at the end.

    ## Action space
    ``action_mode="ratio"`` (default): ``Box(min_keep, 1, (1,), float32)``, the keep-ratio
    of the current prunable layer. It becomes a unit count (at least one unit stays) and
    the criterion picks which units stay. With a FLOPs budget the count is clamped to the
    range that keeps the budget reachable from above *and* below (AMC's
    resource-constrained mode), so every policy ends within 1% of the base FLOPs of the
    budget (one unit of the last layer is the finest step; with ``round_to``, one rounding
    step; with a ``latency_budget`` the same holds for predicted latency).

    ``budget_tolerance=τ`` (a fraction of the base cost, default 0) widens the landing from
    "as close to the budget as a unit allows" to anywhere in ``[budget - τ, budget]``: the
    lower side of the clamp then only keeps ``budget - τ`` reachable (a τ finer than one
    count's step lands as close as it can, as with 0). With τ = 0 a layer
    whose FLOPs are a small share (the LSTM's dense layer, a last 2x2 convolution) has no
    choice at all: its count is whatever fills the budget's remainder.

    With ``round_to=N`` every kept count is a multiple of N, or all the layer's units (a
    layer of fewer than N units keeps them all; AMC rounds to 8): a count is rounded to the
    nearest such value inside the clamp range, which is itself made of such values.

    ``action_mode="mask"``: ``Box(0, 1, (max units,), float32)``, one keep score per unit of
    the current layer (entries beyond its units are ignored). Units scoring at least 0.5
    are asked for; their count goes through the same clamp, and the units kept are the
    clamped count with the highest scores: a request over the allowed count loses its
    lowest-scoring units, one under it gains the highest-scoring of the others. Ties go to
    the criterion, then the lower index. A 0/1 mask is a valid action;
    :func:`mask_scores` encodes a sampled mask with the probabilities it was drawn from,
    so that trimming and filling follow those probabilities. Records then hold
    ``kept_units``, the unit indices of every layer.

    NaN, infinite, wrongly shaped or out-of-range actions raise ``ValueError``.

    ## Observation space
    ``Box(0, 1, (22,), float32)`` describing the current layer: index, type (one-hot conv,
    linear, lstm), input and output units, kernel, stride, its FLOPs, FLOPs removed so far,
    FLOPs of the layers still to come, previous keep-ratio (AMC's embedding); the budget
    and the clamp range of this step; and statistics of the layer's mean activations
    (relative size, spread, share of near-dead units, lower quartile) and weight L1 norms
    (spread, lower quartile, relative size). All are scaled to [0, 1].

    ## Rewards
    Zero until the last step, then ``reward`` of the pruned network (``budget``,
    ``tradeoff``, ``log_flops`` or ``latency``, see :mod:`prune_env.rewards`), computed from the metric
    on a fixed validation slice of the training split (never the test split), normalised
    to [0, 1], and the FLOPs ratio. Before it is measured the pruned copy is prepared by
    the ``evaluation`` mode (:mod:`prune_env.evaluation`): ``plain``, ``adaptive_bn`` or
    ``finetune``. The last ``info["report"]`` holds the episode's record in the
    ``report.json`` schema. An episode whose keep counts were measured before returns the
    stored record (``cache``; never with the ``random`` criterion); ``cache_hits`` and
    ``cache_misses`` count them.

    ## Episode end
    Terminates after one step per prunable layer; never truncates. ``step()`` before the
    first ``reset()`` or after the last step raises Gymnasium's ``ResetNeeded``. The info
    dict of ``reset`` and ``step`` holds ``layer``, the index of the layer the next action
    is for (also :attr:`current_layer`): policies read it there, never from a feature.

    ## Arguments
    - ``target``: a registered target name or :class:`Target`.
    - ``flops_budget``: fraction of the base FLOPs to keep, or None for no hard budget.
    - ``reward``: a name in :data:`prune_env.rewards.REWARDS`; ``reward_kwargs`` its options.
    - ``criterion``: which units to keep within a layer (``l1``, ``activation``, ``random``).
    - ``action_mode``: ``ratio`` (a keep-ratio per layer) or ``mask`` (a score per unit).
    - ``min_keep``: lowest keep-ratio of any layer.
    - ``round_to``: kept unit counts are multiples of this (or all units); None: any count.
    - ``budget_tolerance``: how far under the budget a network may land, a fraction of the
      base cost in [0, budget); 0: as close as the counts allow.
    - ``latency_budget``: fraction of the unpruned network's *predicted* latency to keep, in
      place of ``flops_budget`` (which must then be None); the clamp works on the latency
      table's prediction (:mod:`prune_env.latency`, built once per device, batch
      ``latency_batch_size``, threads and ``latency_engine``, and cached) exactly as on
      FLOPs; ``latency_statistic`` and ``latency_table_rounds`` say how its cells are timed
      (:meth:`prune_env.latency.LatencyTable.measure`), ``latency_threads`` with how many torch
      threads (default: the process's). Records then hold
      ``latency_ms_predicted`` and the table's settings. ``latency_table``: a table already
      measured (its ``to_dict()``), used instead of building one: episode workers take the
      main process's, so that every process clamps on the same prediction.
    - ``val_size``: validation examples (episodes for CartPole) per evaluation.
    - ``evaluation``: how a candidate is prepared before it is measured; with
      ``bn_calibration_size`` (``adaptive_bn``) and ``finetune_steps`` (``finetune``).
    - ``cache``: reuse the record of keep counts measured before.
    - ``model``: the network to prune (default: the target's pretrained checkpoint).
    - ``layer_types``: module types beyond the built-ins (:mod:`prune_env.layer_types`).
    - ``data_dir``, ``limit``: passed to the target when ``target`` is a name.

    The environment never edits ``model``: each episode prunes a copy.

    ## Version history
    - v0: first version; evaluation modes and the measurement cache added without
      changing the ``plain`` rewards.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        target: str | Target = "cartpole_policy",
        flops_budget: float | None = 0.5,
        reward: str = "budget",
        criterion: str = "l1",
        min_keep: float = 0.1,
        val_size: int | None = None,
        calibration_size: int = 512,
        model: nn.Module | None = None,
        reward_kwargs: dict | None = None,
        data_dir: str | None = None,
        limit: int | None = None,
        evaluation: str = "plain",
        bn_calibration_size: int = 1024,
        finetune_steps: int = 20,
        cache: bool = True,
        layer_types: tuple[LayerType, ...] | list[LayerType] = (),
        action_mode: str = "ratio",
        round_to: int | None = None,
        budget_tolerance: float = 0.0,
        latency_budget: float | None = None,
        latency_batch_size: int = 1,
        latency_engine: str = "torch",
        latency_statistic: str = "median",
        latency_table_rounds: int = 1,
        latency_threads: int | None = None,
        latency_table: dict | None = None,
    ):
        super().__init__()
        self._arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.target = get_target(target, data_dir, limit) if isinstance(target, str) else target
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        if flops_budget is not None and not 0.0 < flops_budget <= 1.0:
            raise ValueError(f"flops_budget must be in (0, 1] or None, got {flops_budget}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"unknown action_mode {action_mode!r}; choose one of: {', '.join(ACTION_MODES)}")
        self.action_mode = action_mode
        if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer))
                                     or round_to < 1):
            raise ValueError(f"round_to must be a whole number of units, at least 1, or None; got {round_to!r}")
        self.round_to = int(round_to) if round_to else None
        if latency_budget is not None:
            if not 0.0 < latency_budget <= 1.0:
                raise ValueError(f"latency_budget must be in (0, 1] or None, got {latency_budget}")
            if flops_budget is not None:
                raise ValueError("pass either a flops_budget or a latency_budget: set flops_budget=None to budget "
                                 "the predicted latency")
        if reward == "latency" and latency_budget is None:
            raise ValueError("the 'latency' reward needs a latency_budget")
        if reward == "budget" and flops_budget is None and latency_budget is None:
            raise ValueError("the 'budget' reward needs a flops_budget (or a latency_budget); pass one or choose "
                             "'tradeoff'/'log_flops'")
        self.flops_budget, self.min_keep, self.criterion = flops_budget, float(min_keep), criterion
        self.latency_budget, self.latency_threads = latency_budget, latency_threads
        self.budget = latency_budget if latency_budget is not None else flops_budget
        """The budget the clamp enforces, a fraction of ``cost_base``: predicted latency or FLOPs."""
        if not 0.0 <= budget_tolerance < (self.budget or 1.0):
            raise ValueError(f"budget_tolerance must lie in [0, budget) (a fraction of the base cost), got "
                             f"{budget_tolerance}")
        self.budget_tolerance = float(budget_tolerance)
        self.reward_name, self.reward_kwargs = reward, dict(reward_kwargs or {})
        self._reward_fn, self._importance = get_reward(reward), get_criterion(criterion)
        self.model = (model if model is not None else self.target.load_pretrained()).eval()
        self.pruner = make_pruner(self.model, self.target.example_input(),
                                  self.target.calibration_inputs(calibration_size), layer_types,
                                  self.target.keep_layers)
        self.layers, self.flop_model = self.pruner.layers, self.pruner.flop_model
        self.n_layers = len(self.layers)
        self.units = self.pruner.units
        self.allowed = [allowed_counts(int(u), keep_count(self.min_keep, int(u)), self.round_to) for u in self.units]
        """Per layer, the unit counts it may keep (every count from min_keep's, or the rounded ones)."""
        self.min_counts = np.array([int(a[0]) for a in self.allowed])
        self.flops_base = float(self.flop_model.base)
        self.params_base = count_params(self.model)
        self.latency_table = None
        if latency_budget is not None or reward == "latency":
            from prune_env.latency import LatencyTable

            self.latency_table = LatencyTable.from_dict(latency_table) if latency_table is not None else \
                LatencyTable.build(self.pruner, self.target.name, latency_batch_size, latency_engine,
                                   self.target.device, low=self.min_counts, statistic=latency_statistic,
                                   rounds=latency_table_rounds, round_to=self.round_to, threads=latency_threads)
        self.cost = self.latency_table.predict if latency_budget is not None else self.flop_model.flops
        """What the budget limits, from kept counts: predicted ms (latency budget) or FLOPs."""
        self.cost_base = float(self.cost(self.units))
        lowest = self.cost(self.min_counts) / self.cost_base
        if self.budget is not None and lowest > self.budget * 1.001:
            kind = "latency_budget" if latency_budget is not None else "flops_budget"
            raise UnreachableBudgetError(
                f"{kind} {self.budget} is below what min_keep={min_keep}"
                f"{f' and round_to={self.round_to}' if self.round_to else ''} allow ({lowest:.3f}); "
                f"choose a budget of at least {lowest:.3f} or a smaller min_keep")
        self.metric_scale = float(self.target.metric_scale)
        self.evaluation = make_evaluation(evaluation, self.target, bn_calibration_size, finetune_steps)
        self.val_size = val_size
        self._evaluate = self.target.evaluator("val", val_size)
        self.metric_base = self._evaluate(self.model)
        # a random criterion draws other units each episode, unless the actions choose the units (mask mode)
        self._cache: dict[tuple, dict[str, Any]] | None = (
            {} if cache and (criterion != "random" or action_mode == "mask") else None)
        self.cache_hits = self.cache_misses = 0
        self._layer_flops_base = self.flop_model.layer_flops(self.units) / self.flops_base
        self._static = self._static_features()
        self.timings: dict[str, float] = defaultdict(float)
        self._last_model: nn.Module | None = None
        self._last_counts: np.ndarray | None = None
        self._last_kept: list[np.ndarray] | None = None
        if action_mode == "mask":
            self.action_space = spaces.Box(0.0, 1.0, shape=(int(max(self.units)),), dtype=np.float32)
        else:
            self.action_space = spaces.Box(np.float32(self.min_keep), np.float32(1.0), shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(N_FEATURES,), dtype=np.float32)
        self._t, self._counts = 0, np.array(self.units)
        self._kept: list[np.ndarray] = []
        self._needs_reset = True
        self._episode_seed: int | None = None
        self._deferred: list[dict[str, Any]] | None = None  # the reports of deferred episodes
        self._played: list[np.ndarray] = []  # this episode's actions, recorded while deferred
        self._prefetched: dict[tuple, tuple[dict[str, Any], nn.Module | None]] = {}
        self._last_rng_state: dict | None = None

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments this environment was built with (``PruningEnv(**arguments)``
        builds the same environment again, in another process: see :mod:`agents.parallel`), the
        latency table included: a worker with other threads must not time a table of its own."""
        arguments = dict(self._arguments)
        if self.latency_table is not None:
            arguments["latency_table"] = self.latency_table.to_dict()
        return arguments

    # ---- Gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._episode_seed = seed
        self._t = 0
        self._counts = np.array(self.units)
        self._kept = []
        self._played = []
        self._last_model, self._last_counts, self._last_kept = None, None, None
        self._needs_reset = False
        return self._observation(), {"layer": 0}

    def step(self, action):
        if self._needs_reset:
            raise ResetNeeded("call env.reset() before step(): " + (
                "the episode is over" if self._t >= self.n_layers else "no episode has started"))
        lo, hi = self._bounds
        checked = self._check_scores(action) if self.action_mode == "mask" else self._check_action(action)
        if self._deferred is not None:  # a rejected action is never replayed
            self._played.append(np.array(action, copy=True))
        if self.action_mode == "mask":
            self._counts[self._t] = self._clamp(self._t, int((checked >= KEEP_THRESHOLD).sum()), lo, hi)
            self._kept.append(self._top_scored(checked, int(self._counts[self._t])))
        else:
            wanted = keep_count(checked, int(self.units[self._t]))
            self._counts[self._t] = self._clamp(self._t, wanted, lo, hi)
        self._t += 1
        if self._t < self.n_layers:
            return self._observation(), 0.0, False, False, {"layer": self._t}
        self._needs_reset = True
        report = self._finish_episode()
        return self._observation(), float(report["reward"]), True, False, {"layer": self._t, "report": report}

    # ---- episode end -----------------------------------------------------------------
    def _finish_episode(self) -> dict[str, Any]:
        kept = list(self._kept) if self.action_mode == "mask" else None
        key = network_key(self._counts, kept)
        if self._deferred is not None:
            report = {"keep_counts": [int(c) for c in self._counts], "network_key": key,
                      "episode_seed": self._episode_seed, "actions": list(self._played),
                      "reward": float("nan"), "deferred": True}
            self._deferred.append(report)
            return report
        self.timings["episodes"] += 1
        self._last_counts, self._last_kept = self._counts.copy(), kept
        self._last_rng_state = copy.deepcopy(self.np_random.bit_generator.state)
        if self._cache is not None and key in self._cache:
            self.cache_hits += 1
            return copy.deepcopy(self._cache[key])
        self.cache_misses += 1
        prefetched = self._prefetched.pop((self._episode_seed, key), None)
        if prefetched is not None:  # measured by a worker (agents.parallel)
            record, self._last_model = prefetched
            if self._cache is not None:
                self._cache[key] = copy.deepcopy(record)
            return record
        model = self._build(self._counts, self._last_kept)
        started = time.perf_counter()
        metric = self._evaluate(model)
        self.timings["evaluation"] += time.perf_counter() - started
        started = time.perf_counter()
        record = self.measure(model, metric)
        self.timings["flops"] += time.perf_counter() - started
        self._last_model = model
        if self._cache is not None:
            self._cache[key] = copy.deepcopy(record)
        return record

    def _build(self, counts: np.ndarray, kept: list[np.ndarray] | None = None) -> nn.Module:
        """The pruned copy at ``counts`` (units chosen by the criterion) or keeping the unit
        indices ``kept``, prepared by the evaluation mode."""
        started = time.perf_counter()
        if kept is not None:
            model = self.pruner.prune_indices(kept)
        else:
            model = self.pruner.prune_counts(counts, self._importance, self.np_random)
        self.timings["surgery"] += time.perf_counter() - started
        started = time.perf_counter()
        self.evaluation.prepare(model)
        self.timings["preparation"] += time.perf_counter() - started
        return model

    def rebuild(self, record: dict[str, Any]) -> nn.Module:
        """The network of an episode record (its ``kept_units``, or its ``keep_counts`` with
        this env's criterion), prepared by the evaluation mode as the episode was."""
        kept = record.get("kept_units")
        return self._build(np.asarray(record["keep_counts"]),
                           None if kept is None else [np.asarray(k, dtype=np.int64) for k in kept])

    @property
    def last_model(self) -> nn.Module | None:
        """The last episode's pruned network, as measured (rebuilt on demand after a cache hit
        or a measurement made elsewhere, from the random state the episode ended with)."""
        if self._last_model is None and self._last_counts is not None:
            now = self.np_random.bit_generator.state
            self.np_random.bit_generator.state = self._last_rng_state
            try:
                self._last_model = self._build(self._last_counts, self._last_kept)
            finally:
                self.np_random.bit_generator.state = now
        return self._last_model

    # ---- measuring elsewhere (agents.parallel) ---------------------------------------
    @contextmanager
    def deferred_measurement(self) -> Iterator[list[dict[str, Any]]]:
        """Within it, an episode's last step measures nothing: its report holds only
        ``keep_counts``, ``network_key``, ``episode_seed`` and the episode's ``actions``
        (reward NaN, ``deferred``), and the cache, counters and ``last_model`` are untouched.
        Yields the list these reports are appended to, in order. Used to plan a batch of
        episodes whose networks are then measured in parallel."""
        self._deferred = []
        try:
            yield self._deferred
        finally:
            self._deferred = None

    @property
    def caches_measurements(self) -> bool:
        """Whether a network measured once is answered from the cache afterwards."""
        return self._cache is not None

    def is_measured(self, key: tuple) -> bool:
        """Whether an episode ending in network ``key`` would be answered from the cache."""
        return self._cache is not None and key in self._cache

    def prefetch(self, seed: int | None, key: tuple, record: dict[str, Any], model: nn.Module | None = None) -> None:
        """Hand in the record of network ``key`` measured elsewhere for the episode reset with
        ``seed`` (and the measured network, or None to build it again when asked for): when
        that episode ends here, it returns ``record`` instead of measuring, and caches it, as a
        measurement made here would be."""
        self._prefetched[(seed, key)] = (record, model)

    def score(self, model: nn.Module) -> float:
        """Prepare ``model`` (a pruned copy, never the pretrained model) in place with the
        evaluation mode and measure it on validation."""
        if model is self.model:
            raise ValueError("score() prepares the model in place: pass a pruned copy, not the pretrained model")
        self.evaluation.prepare(model)
        return self.validation_metric(model)

    def validation_metric(self, model: nn.Module) -> float:
        """``model``'s metric on the validation slice, as it is."""
        return self._evaluate(model)

    def measure(self, model: nn.Module, metric: float, keep_counts: np.ndarray | None = None) -> dict[str, Any]:
        """The ``report.json`` fields and the reward for a pruned ``model`` with val ``metric``."""
        counts = self._counts if keep_counts is None else keep_counts
        flops = float(self.flop_model.flops(counts))
        ratio = flops / self.flops_base
        reward = self._reward_fn(metric=metric / self.metric_scale, flops_ratio=ratio, flops=flops,
                                 **self.reward_kwargs)
        return {
            "target": self.target.name, "flops_budget": self.flops_budget, "reward_name": self.reward_name,
            "criterion": self.criterion, "round_to": self.round_to, "budget_tolerance": self.budget_tolerance,
            **self.evaluation.settings(),
            "keep_ratios": [round(int(c) / int(u), 6) for c, u in zip(counts, self.units, strict=True)],
            "keep_counts": [int(c) for c in counts],
            "flops_base": int(round(self.flops_base)), "flops_pruned": int(round(flops)), "flops_ratio": ratio,
            "params_base": self.params_base, "params_pruned": count_params(model),
            "metric_name": self.target.metric_name, "metric_base_val": self.metric_base, "metric_pruned_val": metric,
            "reward": reward,
            **(self._latency_fields(counts) if self.latency_table is not None else {}),
            **({"kept_units": [[int(i) for i in k] for k in self._kept]}
               if self.action_mode == "mask" and keep_counts is None and len(self._kept) == self.n_layers else {}),
        }

    def _latency_fields(self, counts: np.ndarray) -> dict[str, Any]:
        """The latency budget and the table's prediction for ``counts`` (``report.json``)."""
        predicted = self.latency_table.predict(counts)
        return {"latency_budget": self.latency_budget, "latency_ms_predicted": predicted,
                "latency_ms_predicted_base": self.latency_table.base,
                "latency_ratio_predicted": predicted / self.latency_table.base,
                "latency_table": dict(self.latency_table.settings)}

    # ---- actions and the budget ------------------------------------------------------
    def _check_action(self, action) -> float:
        a = np.asarray(action, dtype=np.float64)
        if a.size != 1 or a.ndim > 1:
            raise ValueError(f"action must be one keep-ratio (shape () or (1,)), got shape {a.shape}")
        value = float(a.reshape(-1)[0])
        if not np.isfinite(value):
            raise ValueError(f"action must be a finite keep-ratio, got {value}")
        # a report's keep-ratio of a layer at its floor (6/64 at min_keep 0.1) replays too
        lowest = min(self.min_keep, self.min_counts[self._t] / self.units[self._t])
        if not lowest - 1e-6 <= value <= 1.0 + 1e-6:
            raise ValueError(f"keep-ratio {value} is outside [min_keep={self.min_keep}, 1]")
        return min(max(value, self.min_keep), 1.0)

    def _check_scores(self, action) -> np.ndarray:
        """The current layer's unit scores from a ``mask``-mode action."""
        a = np.asarray(action, dtype=np.float64).reshape(-1) if np.ndim(action) <= 1 else None
        units = int(self.units[self._t])
        if a is None or len(a) not in (units, self.action_space.shape[0]):
            raise ValueError(f"a mask action is one score per unit: shape ({units},) or "
                             f"{self.action_space.shape}, got shape {np.shape(action)}")
        a = a[:units]
        if not np.isfinite(a).all():
            raise ValueError("mask scores must be finite")
        if a.min() < -1e-6 or a.max() > 1.0 + 1e-6:
            raise ValueError(f"mask scores must be in [0, 1], got {a.min():.3g}..{a.max():.3g}")
        return a

    def _top_scored(self, scores: np.ndarray, n: int) -> np.ndarray:
        """Indices of the ``n`` highest ``scores`` of the current layer, ties to the
        criterion, then to the lower index; ascending."""
        importance = self._importance.scores(self.pruner.stats, self._t, self.np_random).double().numpy()
        order = np.lexsort((np.arange(len(scores)), -importance, -scores))
        return np.sort(order[:n])

    @property
    def budget_cost(self) -> float | None:
        """The budget in the units of :attr:`cost` (None without a budget)."""
        return None if self.budget is None else self.budget * self.cost_base

    def _cost_with(self, t: int, n: int, rest: np.ndarray) -> float:
        counts = self._counts.copy()
        counts[t] = n
        counts[t + 1:] = rest[t + 1:]
        return self.cost(counts)

    def _count_bounds(self, t: int) -> tuple[int, int]:
        """Unit counts of layer ``t`` that keep the budget reachable (all allowed counts if
        none); both are allowed counts."""
        allowed = self.allowed[t]
        budget = self.budget_cost
        if budget is None:
            return int(allowed[0]), int(allowed[-1])
        last = len(allowed) - 1
        # largest count whose most-pruned completion still fits the budget
        hi = allowed[largest_int(0, last, lambda i: self._cost_with(t, allowed[i], self.min_counts) <= budget)]
        # smallest count whose unpruned completion still reaches the budget (less the tolerance)
        floor = budget - self.budget_tolerance * self.cost_base
        lo = allowed[smallest_int(0, last, lambda i: self._cost_with(t, allowed[i], self.units) >= floor)]
        if lo <= hi:
            return int(lo), int(hi)
        # the budget falls between two counts: take the one that can land closer to it, hi
        # with the rest unpruned (its largest cost, still under) and lo with the rest most
        # pruned (its smallest cost, still over)
        under = budget - self._cost_with(t, hi, self.units)
        over = self._cost_with(t, lo, self.min_counts) - budget
        best = hi if under <= over else lo
        return int(best), int(best)

    def _clamp(self, t: int, n: int, lo: int, hi: int) -> int:
        """``n`` rounded to layer ``t``'s nearest allowed count, within [lo, hi]."""
        return int(min(max(self.round_count(t, n), lo), hi))

    def round_count(self, t: int, n: int, down: bool = False) -> int:
        """The allowed count of layer ``t`` nearest ``n`` (ties and ``down``: the lower one;
        the smallest allowed count when ``n`` is below it)."""
        allowed = self.allowed[t]
        i = int(np.searchsorted(allowed, n))
        if i < len(allowed) and allowed[i] == n:
            return int(n)
        below, above = allowed[max(i - 1, 0)], allowed[min(i, len(allowed) - 1)]
        if i == 0:
            return int(allowed[0])
        return int(below if down or n - below <= above - n else above)

    def round_counts(self, counts: np.ndarray, down: bool = True) -> np.ndarray:
        """Every layer's count rounded to an allowed one (down by default: the heuristics'
        budget fit rounds its plans this way)."""
        if self.round_to is None:
            return np.minimum(np.maximum(np.asarray(counts, dtype=np.int64), self.min_counts), self.units)
        return np.array([self.round_count(t, int(n), down) for t, n in enumerate(counts)])

    # ---- observations ----------------------------------------------------------------
    def _static_features(self) -> np.ndarray:
        """Per-layer features that do not change within an episode."""
        stats = self.pruner.stats
        widest = float(max(max(layer.units, layer.in_units) for layer in self.layers))
        layer_flops = self._layer_flops_base
        act_means = np.array([float(a.mean()) for a in stats.activation])
        l1_means = np.array([float(w.mean()) for w in stats.l1])
        rows = []
        for i, layer in enumerate(self.layers):
            act, l1 = stats.activation[i].double(), stats.l1[i].double()
            rows.append([
                i / max(1, self.n_layers - 1), *(float(layer.kind == k) for k in OBSERVED_KINDS),
                layer.in_units / widest, layer.units / widest, layer.kernel / 7.0, layer.stride / 4.0,
                layer_flops[i],
                act_means[i] / max(act_means.max(), 1e-12), _spread(act), _share_below(act, 0.1),
                _quartile(act), _spread(l1), _quartile(l1), l1_means[i] / max(l1_means.max(), 1e-12),
            ])
        return np.clip(np.array(rows, dtype=np.float64), 0.0, 1.0)

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.n_layers - 1)
        static = self._static[t]
        counts_so_far = np.array(self.units)
        counts_so_far[:self._t] = self._counts[:self._t]
        removed = 1.0 - self.flop_model.flops(counts_so_far) / self.flops_base
        later = self._layer_flops_base[t + 1:].sum()
        prev = self._counts[t - 1] / self.units[t - 1] if t > 0 else 1.0
        if self._t < self.n_layers:
            self._bounds = self._count_bounds(t)  # step() clamps to these
            lo, hi = self._bounds
        else:
            lo = hi = int(self._counts[t])
        dynamic = [removed, later, prev, self.budget or 1.0, lo / self.units[t], hi / self.units[t]]
        obs = np.concatenate([static[:9], dynamic, static[9:]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    @property
    def current_layer(self) -> int:
        """Index of the layer the next action is for (``n_layers`` once the episode is over)."""
        return self._t


def lowest_flops_ratio(target: Target, min_keep: float, round_to: int | None = None) -> float:
    """The smallest FLOPs budget ``min_keep`` (and ``round_to``) allow on ``target``'s
    architecture (no checkpoint or data needed: checked before any work starts)."""
    pruner = make_pruner(target.build_model().eval(), target.example_input(), keep_layers=target.keep_layers)
    counts = [allowed_counts(int(u), keep_count(min_keep, int(u)), round_to)[0] for u in pruner.units]
    return float(pruner.flop_model.flops(np.array(counts)) / pruner.flop_model.base)


def _spread(x: torch.Tensor) -> float:
    """Coefficient of variation, halved and clipped to [0, 1]."""
    mean = float(x.mean())
    return min(1.0, float(x.std()) / max(mean, 1e-12) / 2.0) if len(x) > 1 else 0.0


def _share_below(x: torch.Tensor, fraction: float) -> float:
    return float((x < fraction * x.max()).double().mean()) if float(x.max()) > 0 else 1.0


def _quartile(x: torch.Tensor) -> float:
    top = float(x.max())
    return float(torch.quantile(x, 0.25)) / top if top > 0 else 0.0
