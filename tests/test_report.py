"""The final report measures the unpruned network once per environment, and every JSON file
and pruned network is written by one function."""

from __future__ import annotations

import json

import pytest
import torch

import experiments.report as report_module
from agents.base import run_episode
from agents.heuristics import make_heuristic
from experiments.report import REPORT_KEYS, BaselineMeasurements, final_report, write_report
from prune_env.env import PruningEnv
from prune_env.export import load_pruned, save_pruned
from prune_env.files import append_jsonl, write_json, write_jsonl
from target_models import get_target


def _env() -> PruningEnv:
    torch.manual_seed(0)
    target = get_target("cartpole_policy", limit=4)
    return PruningEnv(target, model=target.build_model(), flops_budget=0.5, val_size=4, calibration_size=64)


def test_the_unpruned_network_is_measured_once_per_environment(monkeypatch):
    env = _env()
    record = run_episode(env, make_heuristic("uniform", env), seed=0)
    model = env.last_model
    built, timed = [], []
    evaluator = env.target.evaluator

    def counting_evaluator(split="val", size=None):
        built.append(split)
        evaluate = evaluator(split, size)
        return lambda m: (timed.append(("metric", m is env.model)), evaluate(m))[1]

    measure_latency = report_module.measure_latency

    def counting_latency(m, example, **kwargs):
        timed.append(("latency", m is env.model, len(example)))
        return measure_latency(m, example, **kwargs)

    monkeypatch.setattr(env.target, "evaluator", counting_evaluator)
    monkeypatch.setattr(report_module, "measure_latency", counting_latency)
    baseline = BaselineMeasurements(env)
    reports = [final_report(env, model, record, policy="uniform", seed=seed, search_seconds=0.0, episodes=1,
                            finetune_epochs=0, latency_batch_size=batch, baseline=baseline)[0]
               for seed, batch in ((0, 4), (1, 4), (2, 8))]
    assert built == ["test"]
    assert timed.count(("metric", True)) == 1  # the unpruned metric, once
    assert timed.count(("latency", True, 4)) == 1 and timed.count(("latency", True, 8)) == 1
    assert timed.count(("latency", False, 4)) == 2 and timed.count(("latency", False, 8)) == 1
    assert len({r["metric_base"] for r in reports}) == 1
    assert reports[0]["latency_ms_base"] == reports[1]["latency_ms_base"]
    for r in reports:
        assert set(REPORT_KEYS) <= set(r) and r["metric_split"] == "test"
        assert r["budget_kind"] == "flops" and r["reward"] == record["reward"]


def test_an_export_reuses_the_latency_the_report_measured(tmp_path):
    """One figure per network and batch size: the export does not time batch 4 again."""
    from prune_env.export import export_all

    env = _env()
    run_episode(env, make_heuristic("uniform", env), seed=0)
    result = export_all(env.last_model, env.model, env.target, tmp_path, formats=("torchscript",),
                        batch_sizes=(4, 2), measured={4: {"base": 123.0, "pruned": 45.0}})
    assert result["latency_ms"]["batch_4"] == {"base": 123.0, "pruned": 45.0}
    assert all(v > 0 for v in result["latency_ms"]["batch_2"].values())


def test_a_baseline_of_another_environment_is_refused():
    env, other = _env(), _env()
    record = run_episode(env, make_heuristic("uniform", env), seed=0)
    with pytest.raises(ValueError, match="another environment"):
        final_report(env, env.last_model, record, policy="uniform", seed=0, search_seconds=0.0, episodes=1,
                     finetune_epochs=0, latency_batch_size=2, baseline=BaselineMeasurements(other))


def test_json_files_are_written_one_way(tmp_path):
    path = write_json(tmp_path / "a" / "b.json", {"x": 1, "y": [1, 2]})
    assert path.read_text() == '{\n  "x": 1,\n  "y": [\n    1,\n    2\n  ]\n}\n'
    write_report(tmp_path / "run", {"target": "t"}, {"seed": 0})
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == {"target": "t"}
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"seed": 0}
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"a": 1}])
    append_jsonl(rows, {"a": 2})
    assert [json.loads(line) for line in rows.read_text().splitlines()] == [{"a": 1}, {"a": 2}]


def test_a_saved_pruned_network_loads_back(tmp_path):
    target = get_target("cartpole_policy", limit=4)
    model = target.build_model([16, 8])
    save_pruned(tmp_path / "pruned.pt", model, [16, 8], target=target, meta={"note": 1})
    loaded = load_pruned(tmp_path / "pruned.pt", target)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model.eval()(x))
    save_pruned(tmp_path / "plain.pt", model, [16, 8], meta={"task": "rl"})
    meta = torch.load(tmp_path / "plain.pt", weights_only=True)["meta"]
    assert meta == {"widths": [16, 8], "task": "rl"}
