"""Configuration as checked data: typed sections, packaged defaults, flags on top.

A configuration has four sections, each a dataclass below: ``env`` (:class:`EnvConfig`,
keywords of :class:`~prune_env.env.PruningEnv`), ``evaluate`` (:class:`EvaluateConfig`),
``search`` (:class:`SearchConfig`) and ``agent`` (the hyperparameters of one agent kind,
:data:`AGENT_CONFIGS`). Sources, each overriding the ones before it:

1. ``prune_env/configs/<agent>.yaml``, shipped as package data;
2. ``prune_env/configs/<target>.yaml``, shipped as package data (a target of your own has
   none: the dataclass defaults apply);
3. a ``--config`` YAML file;
4. command-line flags (``None`` means "not given").

Every key of every source is checked: an unknown key or a value of the wrong type raises
:class:`ConfigError` naming the source, the section and the key, and listing the valid
keys; values out of range are refused once the sources are merged. The ``agent`` section of
a ``--config`` file may hold one agent's keys, or one sub-section per agent kind
(``agent: {ppo: {...}, reinforce: {...}}``) when a file serves several.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

CONFIG_PACKAGE = "prune_env"
CONFIG_FOLDER = "configs"


class ConfigError(ValueError):
    """A configuration key or value that is not valid; the message is one line."""


def _fail(condition: bool, message: str) -> None:
    if condition:
        raise ConfigError(message)


@dataclass
class EnvConfig:
    """Keywords of :class:`~prune_env.env.PruningEnv` that a configuration may set."""

    flops_budget: float | None = 0.5
    """Fraction of the FLOPs to keep, in (0, 1]; ``null`` only with the tradeoff or log_flops reward."""
    reward: str = "budget"
    """A name in :data:`prune_env.rewards.REWARDS`."""
    criterion: str = "l1"
    """Which units of a layer go: a name in :data:`prune_env.importance.CRITERIA`."""
    min_keep: float = 0.1
    """Smallest keep-ratio of a layer, in (0, 1]."""
    val_size: int | None = None
    """Validation examples (or episodes) per measurement during the search (``null``: all)."""
    calibration_size: int = 512
    """Training examples that measure per-unit activation statistics."""
    reward_kwargs: dict[str, float] | None = None
    """Extra keywords of the reward function (e.g. ``weight`` of ``tradeoff``)."""
    evaluation: str = "plain"
    """How a candidate is prepared before it is measured: a name in :data:`prune_env.evaluation.EVALUATIONS`."""
    bn_calibration_size: int = 1024
    """Training examples that re-estimate batch-norm statistics (``adaptive_bn``)."""
    finetune_steps: int = 20
    """Optimiser steps before each measurement (``finetune``)."""
    round_to: int | None = None
    """Keep a multiple of this many units in every layer, or all its units (``null``: any count)."""
    budget_tolerance: float = 0.0
    """How far under the budget a network may land, a fraction of the base cost in [0, budget): 0 lands
    as close as a unit allows, which leaves a layer with a small share of the FLOPs no choice."""
    latency_budget: float | None = None
    """Fraction of the predicted unpruned latency to keep, in (0, 1]; replaces ``flops_budget`` when set."""
    latency_batch_size: int = 1
    """Batch size the latency table (and so the latency budget) is measured at."""
    latency_engine: str = "torch"
    """What the latency table times: ``torch`` (eager) or ``onnxruntime``."""
    latency_statistic: str = "median"
    """What each cell of the latency table takes of its timed runs: the ``median`` run or the fastest (``min``)."""
    latency_table_rounds: int = 1
    """Latency-table timing: 10 x this many alternating passes, each running every cell once; each cell
    takes ``latency_statistic`` over them (3 ``min``: VGG16's and the CNN's best)."""
    latency_threads: int | None = None
    """torch threads the latency table is timed with, and the latency budget meant for (``null``: the
    process's count). One thread predicted VGG16 best on a 2-core machine; training keeps every core."""

    def check(self) -> None:
        from prune_env.evaluation import EVALUATIONS
        from prune_env.importance import CRITERIA
        from prune_env.rewards import REWARDS

        _fail(self.flops_budget is not None and not 0 < self.flops_budget <= 1,
              f"env.flops_budget must lie in (0, 1], got {self.flops_budget}")
        _fail(self.reward not in REWARDS, f"env.reward {self.reward!r} is unknown; choose one of: {', '.join(REWARDS)}")
        from prune_env.latency import ENGINES

        _fail(self.reward == "budget" and self.flops_budget is None and self.latency_budget is None,
              "env.flops_budget and env.latency_budget are null, but the budget reward needs one; set one or "
              "choose another env.reward")
        _fail(self.latency_budget is not None and not 0 < self.latency_budget <= 1,
              f"env.latency_budget must lie in (0, 1], got {self.latency_budget}")
        _fail(self.reward == "latency" and self.latency_budget is None,
              "the latency reward needs env.latency_budget")
        _fail(self.latency_engine not in ENGINES,
              f"env.latency_engine {self.latency_engine!r} is unknown; choose one of: {', '.join(ENGINES)}")
        _at_least("env.latency_batch_size", self.latency_batch_size, 1)
        from prune_env.cost import TIMING_STATISTICS

        _fail(self.latency_statistic not in TIMING_STATISTICS, f"env.latency_statistic {self.latency_statistic!r} "
              f"is unknown; choose one of: {', '.join(TIMING_STATISTICS)}")
        _at_least("env.latency_table_rounds", self.latency_table_rounds, 1)
        _at_least("env.latency_threads", self.latency_threads, 1)
        _fail(self.criterion not in CRITERIA,
              f"env.criterion {self.criterion!r} is unknown; choose one of: {', '.join(CRITERIA)}")
        _fail(not 0 < self.min_keep <= 1, f"env.min_keep must lie in (0, 1], got {self.min_keep}")
        _fail(self.evaluation not in EVALUATIONS,
              f"env.evaluation {self.evaluation!r} is unknown; choose one of: {', '.join(EVALUATIONS)}")
        _at_least("env.val_size", self.val_size, 1)
        _at_least("env.calibration_size", self.calibration_size, 1)
        _at_least("env.bn_calibration_size", self.bn_calibration_size, 2)
        _at_least("env.finetune_steps", self.finetune_steps, 1)
        _at_least("env.round_to", self.round_to, 1)
        budget = self.latency_budget if self.latency_budget is not None else self.flops_budget
        _fail(not 0 <= self.budget_tolerance < (budget or 1),
              f"env.budget_tolerance must lie in [0, budget) (a fraction of the base cost), got {self.budget_tolerance}")


@dataclass
class EvaluateConfig:
    """The final measurement of the chosen network."""

    finetune_epochs: float = 1.0
    """Epochs of fine-tuning (rounds of distillation for a policy) before the test split; 0: none."""
    latency_batch_size: int = 64
    """Batch size of the latency measurement."""
    rounds: int = 1
    """Reach the chosen network in this many rounds, re-ranking units and fine-tuning between
    them out of ``finetune_epochs``, as ``ngf_scheduled`` does (1: single-shot; policies with
    rounds of their own keep theirs)."""

    def check(self) -> None:
        _fail(self.finetune_epochs < 0, f"evaluate.finetune_epochs must be at least 0, got {self.finetune_epochs}")
        _at_least("evaluate.latency_batch_size", self.latency_batch_size, 1)
        _at_least("evaluate.rounds", self.rounds, 1)


@dataclass
class SearchConfig:
    """The search for the best allocation."""

    episodes: int = 200
    """Measured candidates (episodes) every searcher gets."""
    reselect_top: int = 0
    """Re-measure the best K distinct candidates on validation examples the search never saw
    (those after its ``env.val_size``) and keep the best by that figure: a guard against
    the winner's curse of a small validation slice (0: keep the best episode as measured)."""
    reselect_finetune_steps: int = 0
    """Fine-tune a copy of each re-selected candidate this many steps (the target's own
    fine-tuning, fixed seed) before it is re-measured: a costlier, more faithful measurement
    than the search affords per episode (0: measure the networks as the search built them)."""

    def check(self) -> None:
        _at_least("search.episodes", self.episodes, 1)
        _at_least("search.reselect_top", self.reselect_top, 0)
        _at_least("search.reselect_finetune_steps", self.reselect_finetune_steps, 0)
        _fail(self.reselect_finetune_steps > 0 and self.reselect_top == 0,
              "search.reselect_finetune_steps fine-tunes the re-selected candidates: set search.reselect_top "
              "(--reselect-top K) too")


@dataclass
class PPOConfig:
    """Hyperparameters of :class:`agents.ppo.PPOAgent` (stable-baselines3 PPO)."""

    kind: ClassVar[str] = "ppo"
    learning_rate: float = 3e-4
    gamma: float = 0.99
    clip_range: float = 0.2
    n_epochs: int = 10
    batch_size: int = 64
    n_steps: int | None = None
    """Steps per rollout, rounded up to whole episodes (``null``: at least 8 episodes and one batch)."""
    ent_coef: float = 0.0
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the policy and value networks."""

    def check(self) -> None:
        _fail(self.learning_rate <= 0, f"agent.learning_rate must be above 0, got {self.learning_rate}")
        _fail(not 0 < self.gamma <= 1, f"agent.gamma must lie in (0, 1], got {self.gamma}")
        _fail(self.clip_range <= 0, f"agent.clip_range must be above 0, got {self.clip_range}")
        _at_least("agent.n_epochs", self.n_epochs, 1)
        _at_least("agent.batch_size", self.batch_size, 1)
        _at_least("agent.n_steps", self.n_steps, 1)
        _fail(self.ent_coef < 0, f"agent.ent_coef must be at least 0, got {self.ent_coef}")
        _fail(not self.net_arch or min(self.net_arch) < 1,
              f"agent.net_arch must be a non-empty list of widths of at least 1, got {self.net_arch}")


@dataclass
class ReinforceConfig:
    """Hyperparameters of :class:`agents.reinforce.ReinforceLayerAgents`."""

    kind: ClassVar[str] = "reinforce"
    learning_rate: float = 3e-3
    batch_episodes: int = 8
    """Episodes per update (rewards are normalised within the batch)."""
    hidden: int = 32
    init_keep: float | str | None = 0.6
    """Keep-ratio the untrained policies choose on average, in (min_keep, 1) (``null``: the budget's uniform
    keep-ratio in every layer, so the first episodes do not leave the budget clamp to fill the last layers;
    ``best``: the widths of the best single-shot heuristic by the search's reward, whose networks the first
    episodes measure)."""
    entropy_coef: float = 0.0

    def check(self) -> None:
        _fail(self.learning_rate <= 0, f"agent.learning_rate must be above 0, got {self.learning_rate}")
        _check_reinforce_batch(self.batch_episodes)
        _at_least("agent.hidden", self.hidden, 1)
        _fail(self.init_keep is not None and self.init_keep != "best"
              and (isinstance(self.init_keep, str) or not 0 < self.init_keep < 1),
              f"agent.init_keep must lie in (0, 1), be null or 'best', got {self.init_keep!r}")
        _fail(self.entropy_coef < 0, f"agent.entropy_coef must be at least 0, got {self.entropy_coef}")


def _check_reinforce_batch(batch_episodes: int) -> None:
    _fail(not isinstance(batch_episodes, int) or batch_episodes < 2,
          f"agent.batch_episodes must be at least 2, got {batch_episodes}: REINFORCE normalises rewards within a "
          "batch, so a batch of one episode has no advantage to learn from")


CHANNEL_INITS = ("uniform", "importance", "keep", "global", "best")
"""How channel agents start (:mod:`agents.reinforce_channels`)."""


@dataclass
class ReinforceChannelsConfig:
    """Hyperparameters of :class:`agents.reinforce_channels.ReinforceChannelAgents`."""

    kind: ClassVar[str] = "reinforce_channels"
    learning_rate: float = 0.1
    batch_episodes: int = 8
    """Episodes per update (rewards are normalised within the batch)."""
    init: str = "best"
    """Starting keep probabilities: ``uniform``, ``importance``, ``keep`` (all-keep bias), ``global`` (the
    network of a global threshold on normalised criterion scores, as the l1 and ngf heuristics) or ``best`` (the
    best single-shot heuristic's network by the search's reward; its first episodes measure them)."""
    init_keep: float | None = None
    """Starting keep probability, in (0, 1) (``null``: the budget's uniform keep-ratio; 0.95 for ``keep``; 0.9 for
    the units ``global`` and ``best`` keep)."""
    importance_scale: float = 1.0
    """Logit added per standard deviation of the criterion's score (``importance``)."""
    entropy_coef: float = 0.0
    width_noise: float = 0.0
    """Standard deviation of the shift drawn per layer and episode and added to all its logits, so that
    whole layers explore keeping more or fewer units (0: independent Bernoulli masks only)."""

    def check(self) -> None:
        _fail(self.learning_rate <= 0, f"agent.learning_rate must be above 0, got {self.learning_rate}")
        _check_reinforce_batch(self.batch_episodes)
        _fail(self.init not in CHANNEL_INITS,
              f"agent.init {self.init!r} is unknown; choose one of: {', '.join(CHANNEL_INITS)}")
        _fail(self.init_keep is not None and not 0 < self.init_keep < 1,
              f"agent.init_keep must lie in (0, 1), got {self.init_keep}")
        _fail(self.init in ("global", "best") and self.init_keep is not None and self.init_keep <= 0.5,
              f"agent.init {self.init!r} starts the units it keeps at agent.init_keep, which must lie in (0.5, 1) "
              f"(at or below 0.5 the dropped units would be the likelier ones); got {self.init_keep}")
        _fail(self.importance_scale < 0, f"agent.importance_scale must be at least 0, got {self.importance_scale}")
        _fail(self.entropy_coef < 0, f"agent.entropy_coef must be at least 0, got {self.entropy_coef}")
        _fail(not self.width_noise >= 0, f"agent.width_noise must be at least 0, got {self.width_noise}")


@dataclass
class RandomSearchConfig:
    """Hyperparameters of :class:`agents.searchers.RandomSearch`."""

    kind: ClassVar[str] = "random_search"
    batch_episodes: int = 8
    """Episodes between checkpoints."""

    def check(self) -> None:
        _at_least("agent.batch_episodes", self.batch_episodes, 1)


@dataclass
class EvolutionConfig:
    """Hyperparameters of :class:`agents.searchers.Evolution`."""

    kind: ClassVar[str] = "evolution"
    population: int = 16
    """Generation 0: random allocations; later: parents and children."""
    parents: int = 4
    """Truncation selection, elitist (parents survive); at least 1 and below ``population``."""
    mutation_std: float = 0.1
    """Gaussian noise on keep-ratios."""
    mutation_decay: float = 0.98
    """The noise shrinks by this factor per generation, in (0, 1]."""

    def check(self) -> None:
        _fail(not 1 <= self.parents < self.population,
              f"agent.parents must be at least 1 and below agent.population, got parents={self.parents}, "
              f"population={self.population}")
        _fail(self.mutation_std < 0, f"agent.mutation_std must be at least 0, got {self.mutation_std}")
        _fail(not 0 < self.mutation_decay <= 1, f"agent.mutation_decay must lie in (0, 1], got {self.mutation_decay}")


AgentConfig = PPOConfig | ReinforceConfig | ReinforceChannelsConfig | RandomSearchConfig | EvolutionConfig
AGENT_CONFIGS: dict[str, type] = {cls.kind: cls for cls in (PPOConfig, ReinforceConfig, ReinforceChannelsConfig,
                                                             RandomSearchConfig, EvolutionConfig)}
"""Agent kind -> the dataclass of its hyperparameters (the same names as ``agents.search.AGENTS``)."""
SECTIONS: dict[str, type] = {"env": EnvConfig, "evaluate": EvaluateConfig, "search": SearchConfig}
"""Section name -> dataclass, besides ``agent`` (whose dataclass depends on the agent kind)."""


def _at_least(name: str, value: int | None, minimum: int) -> None:
    _fail(value is not None and value < minimum, f"{name} must be at least {minimum}, got {value}")


@dataclass
class Config:
    """A resolved, checked configuration."""

    env: EnvConfig = field(default_factory=EnvConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    agent: AgentConfig | None = None
    """The hyperparameters of the agent kind asked for; ``None`` when none was."""

    def to_dict(self) -> dict[str, Any]:
        """Plain sections with every value filled in (``agent`` only when there is one)."""
        out = {"env": asdict(self.env), "evaluate": asdict(self.evaluate), "search": asdict(self.search)}
        if self.agent is not None:
            out["agent"] = asdict(self.agent)
        return out


# ---------------------------------------------------------------------------- checking


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    return {float: "a number", int: "an integer", str: "text", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to ``tp``): ints are numbers; text that reads as a number is a
    number (YAML reads ``3e-4`` as text)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_coerce(v, typing.get_args(tp)[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, value
        items = {k: _coerce(v, typing.get_args(tp)[1]) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    raise TypeError(f"no checker for {tp!r}")


def _check_keys(values: Any, cls: type, where: str, source: str) -> dict[str, Any]:
    """``values`` checked against the fields of ``cls``: keys known, types right."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {where} must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key {key!r} in section {where}; valid keys: {', '.join(names)}")
        ok, out[key] = _coerce(value, hints[key])
        if not ok:
            raise ConfigError(f"{source}: {where}.{key} must be {_type_name(hints[key])}, got {value!r}")
    return out


def check_source(data: Any, source: str, agent: str | None = None) -> dict[str, Any]:
    """One source's sections with keys and types checked (values converted: ints to floats
    where a number is meant); the ``agent`` section is checked against ``agent``'s kind, or
    against every kind when none is given (then it is left out)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of sections ({', '.join([*SECTIONS, 'agent'])})")
    out: dict[str, Any] = {}
    for section, values in data.items():
        if section in SECTIONS:
            out[section] = _check_keys(values, SECTIONS[section], section, source)
        elif section == "agent":
            checked = _check_agent_section(values, source, agent)
            if checked is not None:
                out["agent"] = checked
        else:
            raise ConfigError(f"{source}: unknown section {section!r}; valid sections: "
                              f"{', '.join([*SECTIONS, 'agent'])}")
    return out


def _check_agent_section(values: Any, source: str, agent: str | None) -> dict[str, Any] | None:
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section agent must be a mapping of keys to values, got {values!r}")
    nested = [k for k in values if k in AGENT_CONFIGS]
    if nested:  # one sub-section per agent kind
        flat = [k for k in values if k not in AGENT_CONFIGS]
        if flat:
            raise ConfigError(f"{source}: section agent mixes sub-sections ({', '.join(nested)}) with keys "
                              f"({', '.join(flat)}); put every key under its agent's sub-section")
        checked = {kind: _check_keys(sub or {}, AGENT_CONFIGS[kind], f"agent.{kind}", source)
                   for kind, sub in values.items()}
        return checked.get(agent) if agent is not None else None
    if agent is not None:
        cls = AGENT_CONFIGS[agent]
        names = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} in section agent for agent {agent}; valid keys: "
                              f"{', '.join(names)} (hyperparameters of several agents go in sub-sections: "
                              f"agent: {{{agent}: {{...}}}})")
        return _check_keys(values, cls, "agent", source)
    known = {f.name for cls in AGENT_CONFIGS.values() for f in fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in section agent; valid keys: "
                          f"{', '.join(sorted(known))}")
    return None


def _build(cls: type, values: dict[str, Any]):
    obj = cls(**copy.deepcopy(values))
    obj.check()
    return obj


# ---------------------------------------------------------------------------- loading


def packaged_names() -> list[str]:
    """The names of the packaged YAML files (targets and agents)."""
    folder = resources.files(CONFIG_PACKAGE) / CONFIG_FOLDER
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def packaged_yaml(name: str) -> dict[str, Any] | None:
    """The packaged ``configs/<name>.yaml`` (read from the installed package), or ``None``."""
    path = resources.files(CONFIG_PACKAGE) / CONFIG_FOLDER / f"{name}.yaml"
    if not path.is_file():
        return None
    return _parse(path.read_text(), f"{CONFIG_PACKAGE}/{CONFIG_FOLDER}/{name}.yaml")


def _parse(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc


def load_yaml(path: str | Path) -> Any:
    """A ``--config`` file's contents (not yet checked)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file" if not path.exists() else f"--config {path} is not a file")
    return _parse(path.read_text(), str(path))


def merge(base: dict, override: dict, skip_none: bool = False) -> dict:
    """Recursive merge; with ``skip_none``, values of ``override`` that are ``None`` (flags
    not given) are ignored."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "reward_kwargs":
            out[key] = merge(out[key], value, skip_none)
        elif value is not None or not skip_none:
            out[key] = copy.deepcopy(value)
    return out


def _packaged_or_fail(name: str, what: str, required: bool) -> dict[str, Any] | None:
    data = packaged_yaml(name)
    if data is None and required:
        raise ConfigError(f"the packaged configuration {CONFIG_PACKAGE}/{CONFIG_FOLDER}/{name}.yaml of {what} "
                          f"{name!r} is missing; reinstall prune-env")
    return data


def resolve_config(target: str, agent: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> Config:
    """The checked configuration of ``target`` (and ``agent``): packaged agent YAML, then
    packaged target YAML, then ``config_file``, then ``overrides`` (flags; ``None`` values
    are flags not given)."""
    from target_models import TARGETS

    if agent is not None and agent not in AGENT_CONFIGS:
        raise ConfigError(f"unknown agent {agent!r}; choose one of: {', '.join(AGENT_CONFIGS)}")
    sources: list[tuple[str, Any]] = []
    if agent is not None:
        sources.append((f"{CONFIG_PACKAGE}/{CONFIG_FOLDER}/{agent}.yaml", _packaged_or_fail(agent, "agent", True)))
    sources.append((f"{CONFIG_PACKAGE}/{CONFIG_FOLDER}/{target}.yaml",
                    _packaged_or_fail(target, "target", target in TARGETS)))
    if config_file is not None:
        sources.append((str(config_file), load_yaml(config_file)))
    merged: dict[str, Any] = {}
    for source, data in sources:
        merged = merge(merged, check_source(data, source, agent))
    flags = check_source(_drop_none(overrides or {}), "command line", agent)
    merged = merge(merged, flags, skip_none=True)
    env = merged.get("env", {})
    if env.get("latency_budget") is not None:  # a latency budget replaces the FLOPs budget
        _fail(flags.get("env", {}).get("flops_budget") is not None,
              "--flops-budget and --latency-budget exclude each other: give one of them")
        env["flops_budget"] = None
    config = Config(**{name: _build(cls, merged.get(name, {})) for name, cls in SECTIONS.items()})
    _fail(config.search.reselect_top > 0 and config.env.val_size is None,
          "search.reselect_top needs env.val_size: the search measures the first val_size validation examples "
          "and the re-selection the ones after them")
    if agent is not None:
        config.agent = _build(AGENT_CONFIGS[agent], merged.get("agent", {}))
    return config


def _drop_none(overrides: dict) -> dict:
    """Flags not given (``None``), and sections left empty by that, removed."""
    out = {}
    for section, values in overrides.items():
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                out[section] = values
        elif values is not None:
            out[section] = values
    return out


def load_config(target: str, agent: str | None = None, config_file: str | Path | None = None,
                overrides: dict | None = None) -> dict[str, Any]:
    """:func:`resolve_config` as plain sections (``env``, ``evaluate``, ``search`` and, with
    an agent, ``agent``), every value filled in: what scripts pass on and record."""
    return resolve_config(target, agent, config_file, overrides).to_dict()


def make_env(target: Any = "cartpole_policy", config_file: str | Path | None = None, **kwargs):
    """A :class:`~prune_env.env.PruningEnv` set up as the scripts set it up: the target's
    packaged config (then ``config_file``) gives the defaults of every ``env`` key, and
    ``kwargs`` override them (keys that are not config keys, such as ``model``, go to the
    env as they are). ``gym.make(prune_env.ENV_IDS[name])`` builds its env this way."""
    from prune_env.env import PruningEnv

    keys = {f.name for f in fields(EnvConfig)}
    name = target if isinstance(target, str) else target.name
    settings = {k: v for k, v in kwargs.items() if k in keys}
    # a value given as None is a setting (no FLOPs budget, say), not a flag left out
    config = resolve_config(name, config_file=config_file, overrides={"env": settings}).to_dict()["env"]
    config.update(settings)
    return PruningEnv(target, **config, **{k: v for k, v in kwargs.items() if k not in keys})
