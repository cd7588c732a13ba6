"""Parallel episodes and Ray: the serial results, sweeps that resume, a clear error without Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from agents.parallel import Parallelism, RunTasks
from agents.search import SearchMonitor, action_mode_of, make_agent, search
from experiments import compare as compare_module
from experiments.compare import compare
from experiments.train import TrainRun, train_and_report
from prune_env.cli import UsageError
from prune_env.config import load_config
from prune_env.env import PruningEnv
from target_models import get_target
from tests.helpers import REPO, script_env

TIMED = {"search_seconds", "latency_ms_base", "latency_ms_pruned", "latency_threads", "machine", "first_beats_reference"}
"""Report fields that time something: they differ between any two runs."""


def _search(kind: str, parallel: Parallelism, episodes: int = 10):
    env = PruningEnv("cartpole_policy", flops_budget=0.3, val_size=3, action_mode=action_mode_of(kind))
    agent = make_agent(kind, env, seed=1)
    agent.workers = parallel.start(env)
    monitor = SearchMonitor(env, total_episodes=episodes, show_progress=False)
    try:
        search(agent, env, monitor, episodes)
    finally:
        if agent.workers is not None:
            agent.workers.close()
    return monitor, env


@pytest.mark.parametrize("kind", ["random_search", "evolution", "reinforce", "reinforce_channels", "ppo"])
def test_two_workers_give_the_serial_rewards_and_best_network(pretrained_cartpole, kind):
    serial, serial_env = _search(kind, Parallelism())
    parallel, parallel_env = _search(kind, Parallelism(workers=2, threads=1))
    assert len(set(serial.rewards)) > 1  # the episodes differ, so equal lists mean something
    assert parallel.rewards == serial.rewards
    assert parallel.best_record == serial.best_record
    assert (parallel_env.cache_hits, parallel_env.cache_misses) == (serial_env.cache_hits, serial_env.cache_misses)
    # the best network is rebuilt here from a worker's record: the very network the serial run kept
    for a, b in zip(serial.best_model.state_dict().values(), parallel.best_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_workers_refuse_nonsense_and_ppo_with_the_random_criterion(pretrained_cartpole):
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        Parallelism(workers=0)
    from experiments.train import start_workers

    env = PruningEnv("cartpole_policy", flops_budget=0.3, val_size=3, criterion="random")
    with pytest.raises(UsageError, match="ppo.* random criterion.* serially"):
        start_workers(Parallelism(workers=2), "ppo", env)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for this module's tests."""
    ray = pytest.importorskip("ray")
    from agents.parallel import init_ray

    init_ray(cpus=2)
    yield ray
    ray.shutdown()


def _small_config(agent: str | None = None, episodes: int = 6) -> dict:
    return load_config("cartpole_policy", agent, overrides={
        "env": {"flops_budget": 0.3, "val_size": 3}, "search": {"episodes": episodes},
        "evaluate": {"finetune_epochs": 0.1}})


def _untimed(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMED}


def test_a_ray_run_on_a_local_cluster_writes_the_serial_report(pretrained_cartpole, local_ray, tmp_path):
    target = get_target("cartpole_policy")
    config = _small_config("random_search")
    runs = {}
    for name, parallel in [("serial", Parallelism()), ("ray", Parallelism(workers=2, threads=1, ray=True))]:
        train_and_report(TrainRun(target=target, agent="random_search", config=config, out=tmp_path / name,
                                  export=False, show_progress=False, parallel=parallel))
        runs[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert runs["ray"]["episodes"] == 6
    assert _untimed(runs["ray"]) == _untimed(runs["serial"])


def _table(out) -> pd.DataFrame:
    runs = pd.read_csv(out / "runs.csv")
    return runs.drop(columns=[c for c in runs if c in TIMED]).reset_index(drop=True)


@pytest.mark.slow  # about 35 s; the Ray run and the Ray sweeps keep Ray in the default run
def test_compare_through_ray_tasks_gives_the_serial_tables(pretrained_cartpole, local_ray, tmp_path):
    target = get_target("cartpole_policy")
    config = _small_config()
    kwargs = {"budgets": [0.3], "seeds": [0, 1], "heuristics": ("uniform", "ngf"),
              "train_agents": ("random_search",), "agent_configs": {"random_search": _small_config("random_search", 4)}}
    compare(target, config, out=tmp_path / "serial", **kwargs)
    compare(target, config, out=tmp_path / "ray", parallel=Parallelism(threads=1, ray=True), **kwargs)
    serial, ray_table = _table(tmp_path / "serial"), _table(tmp_path / "ray")
    assert len(serial) == 2 * 3 and serial["metric_finetuned"].nunique() > 1
    pd.testing.assert_frame_equal(ray_table, serial)


def test_sweeps_as_ray_tasks_write_the_serial_tables(pretrained_cartpole, local_ray, tmp_path):
    from experiments.sweep import sweep

    target, methods, fractions = get_target("cartpole_policy"), ("l1", "ngf"), [0.5, 0.8]
    tasks = RunTasks(Parallelism(threads=1, ray=True))
    summaries = tasks.gather([tasks.submit(sweep, target, m, fractions, tmp_path / "ray" / m) for m in methods])
    assert [s["method"] for s in summaries] == list(methods)
    tables = {}
    for m in methods:
        sweep(target, m, fractions, tmp_path / "serial" / m)
        tables[m] = pd.read_csv(tmp_path / "serial" / m / "sweep.csv")
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ray" / m / "sweep.csv"), tables[m])
        assert list(tables[m]["fraction"]) == [0.0, *fractions] and tables[m]["params"].is_monotonic_decreasing


def test_an_interrupted_comparison_resumes_without_losing_finished_runs(pretrained_cartpole, tmp_path, monkeypatch):
    target = get_target("cartpole_policy")
    config = _small_config()
    kwargs = {"budgets": [0.3], "seeds": [0, 1], "heuristics": ("uniform", "l1")}
    compare(target, config, out=tmp_path / "whole", **kwargs)

    real = compare_module.final_report
    calls = []

    def killed_after_three(*args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the worker dies mid-sweep
        calls.append(kw["policy"])
        return real(*args, **kw)

    monkeypatch.setattr(compare_module, "final_report", killed_after_three)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        compare(target, config, out=out, **kwargs)
    finished = sorted(p.parent.name for p in out.glob("runs/*/report.json"))
    assert len(finished) == 3
    saved = {name: (out / "runs" / name / "report.json").read_text() for name in finished}

    calls.clear()
    monkeypatch.setattr(compare_module, "final_report", real)
    ran = []
    monkeypatch.setattr(compare_module, "final_report", lambda *a, **kw: ran.append(kw["policy"]) or real(*a, **kw))
    compare(target, config, out=out, resume=True, **kwargs)
    assert len(ran) == 1  # only the run that was cut off
    assert {name: (out / "runs" / name / "report.json").read_text() for name in finished} == saved
    pd.testing.assert_frame_equal(_table(out), _table(tmp_path / "whole"))


def test_ray_flags_without_ray_say_how_to_install_it(isolated_home):
    code = ("import sys, runpy; sys.modules['ray'] = None; "
            "sys.argv = ['train_agent.py', '--target', 'cartpole_policy', '--agent', 'random_search', '--ray']; "
            "runpy.run_path('scripts/train_agent.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=script_env(isolated_home),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "need Ray, an optional extra: pip install -e '.[ray]'" in result.stderr
