"""The per-layer latency table and the latency budget (prune_env.latency)."""

from __future__ import annotations

import argparse
import json
import time
from unittest.mock import patch

import numpy as np
import pytest
import torch

from agents.allocation import play_allocation
from agents.base import run_episode
from agents.heuristics import make_heuristic
from prune_env.latency import CALIBRATION_ALLOCATIONS, LatencyTable, grid_widths
from prune_env.pruner import make_pruner
from target_models import get_target
from target_models.resnet import CifarResNet
from tests.test_env import tiny_env


def _cartpole_table(**kwargs) -> tuple[LatencyTable, object]:
    target = get_target("cartpole_policy")
    pruner = make_pruner(target.build_model().eval(), target.example_input())
    options = {"points": 3, "show_progress": False, **kwargs}
    return LatencyTable.build(pruner, target.name, **options), pruner


def test_the_unpruned_prediction_is_the_sum_of_the_tables_entries_and_grid_points_are_exact():
    table, pruner = _cartpole_table()
    # both sides of every step of 16 channels: the last count of each block and the first of the next
    grid = [1, 16, 17, 32, 33, 48, 49, 64]
    assert [list(g) for g in table.grids] == [list(grid_widths(1, 64, 3))] * 2 == [grid] * 2
    assert table.base == pytest.approx(table.entries_sum())
    assert table.predict(pruner.units) == pytest.approx(table.entries_sum())
    expected = table.blocks[0][0, grid.index(32)] + table.blocks[1][grid.index(32), 0] + table.tail[0]  # (32, 1)
    assert table.layer_times([32, 1]).sum() == pytest.approx(expected)
    # between grid widths the prediction lies between its neighbours' (bilinear weights)
    low, high = sorted((table.predict([33, 32]), table.predict([48, 32])))
    assert low - 1e-9 <= table.predict([40, 32]) <= high + 1e-9
    calibration = table.settings.get("calibration")
    if calibration is not None:  # the whole network's two timings are predicted exactly
        assert table.predict([1, 1]) == pytest.approx(calibration["anchors_ms"][0])
        assert table.base == pytest.approx(calibration["anchors_ms"][1])
        curve = calibration.get("curve")
        if curve is not None:  # ... and the curve through the random allocations' timings keeps both ends
            assert curve["measured_ms"][0] == pytest.approx(calibration["anchors_ms"][0])
            assert curve["measured_ms"][-1] == pytest.approx(calibration["anchors_ms"][1])
            assert np.all(np.diff(curve["predicted_ms"]) > 0) and np.all(np.diff(curve["measured_ms"]) >= 0)
    assert table.predict([48, 20]) > 0
    # the whole network is also timed at random allocations, the same ones on every build
    anchors = table.settings["anchor_counts"]
    assert anchors[:2] == [[1, 1], [64, 64]] and len(anchors) == 2 + CALIBRATION_ALLOCATIONS
    assert any(a != b for a, b in anchors[2:]) and all(1 <= c <= 64 and (c % 8 or c == 64) for a in anchors[2:] for c in a)
    again, _ = _cartpole_table(cache=False)
    assert again.settings["anchor_counts"] == anchors


def test_the_tables_widths_are_the_counts_a_search_keeps():
    from prune_env.latency import as_searched

    # without rounding, off multiples of 8 (aligned counts run faster), the layer's ends kept
    assert list(grid_widths(51, 512, 6)) == [51, 143, 235, 327, 420, 512]
    assert list(grid_widths(13, 128, 6)) == [13, 36, 59, 82, 105, 128]  # 7 steps of 16: an even grid
    assert as_searched(16.2, 8, 64) == 15
    # a layer of few 16-channel steps is timed on both sides of each (above its smallest width):
    # a multiple of 16 runs with its block, so the step is between it and the next count
    assert list(grid_widths(3, 32, 6)) == [3, 16, 17, 32]
    assert list(grid_widths(16, 64, 3)) == [16, 32, 33, 48, 49, 64]
    # with round_to, counts the env allows: multiples of it, or all the units of a narrow layer
    assert list(grid_widths(8, 64, 6, round_to=8)) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert list(grid_widths(13, 128, 6, round_to=8)) == [16, 32, 56, 80, 104, 128]
    assert list(grid_widths(4, 4, 6, round_to=8)) == [4] and as_searched(13, 8, 64, round_to=8) == 16
    table, _ = _cartpole_table(round_to=16)
    assert [list(g) for g in table.grids] == [[16, 32, 48, 64]] * 2 and table.settings["round_to"] == 16
    assert all(c % 16 == 0 for a in table.settings["anchor_counts"] for c in a)  # its calibration networks too


@pytest.fixture
def fake_clock(monkeypatch) -> list[float]:
    """The timers' clock, in seconds, as a one-item list that the fake calls advance."""
    from prune_env import cost

    clock = [0.0]
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])
    return clock


def test_a_staircase_in_16_channel_blocks_is_predicted_exactly_at_every_count(monkeypatch, fake_clock):
    """Kernels that work on 16 channels at a time: a layer's time is flat within a block and
    steps up past each multiple of 16. The grid's both sides of every step let the table
    predict such a cost exactly, where an even grid would put each step between two widths."""
    from prune_env import latency

    def blocks(n: int) -> int:
        return -(-n // 16)

    def staircase(module) -> float:
        return sum(0.01 * blocks(m.in_features) * blocks(m.out_features)
                   for m in module.modules() if isinstance(m, torch.nn.Linear))

    def timeable(engine, module, x, device, folder, name):
        ms = staircase(module)
        return lambda: fake_clock.__setitem__(0, fake_clock[0] + ms / 1000)

    monkeypatch.setattr(latency, "_timeable", timeable)
    target = get_target("cartpole_policy")
    pruner = make_pruner(target.build_model().eval(), target.example_input())
    table = LatencyTable.measure(pruner, show_progress=False, repeats=1)
    for a in range(1, 65):
        for b in (1, 15, 16, 17, 40, 64):
            truth = 0.01 * (blocks(4) * blocks(a) + blocks(a) * blocks(b) + blocks(b) * blocks(2))
            assert table.predict([a, b]) == pytest.approx(truth, rel=1e-6), (a, b)


def test_the_calibration_curve_is_monotone_and_exact_at_both_ends():
    from prune_env.latency import _calibration_curve

    # blocks predicted (1, 4, 6, 8, 10) ms; the whole network measured 6.0 at 4 and 5.5 at 6 (noise)
    curve = _calibration_curve([1.0, 10.0, 4.0, 6.0, 8.0], [1.0, 10.0, 6.0, 5.5, 9.0])
    assert curve["predicted_ms"] == [1.0, 4.0, 6.0, 8.0, 10.0]
    assert curve["measured_ms"] == [1.0, 6.0, 6.0, 9.0, 10.0]  # never falling, ends unchanged
    assert _calibration_curve([1.0, 10.0, 4.0, 4.0], [1.0, 10.0, 5.0, 5.0]) is None  # two anchors alike
    # more allocations than knots: each knot is the medians of a group (ordered by prediction)
    curve = _calibration_curve([1.0, 10.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0], [1.0, 10.0, 2.0, 9.0, 3.0, 7.0, 6.0, 8.0])
    assert curve["predicted_ms"] == [1.0, 2.5, 5.0, 7.5, 10.0]
    assert curve["measured_ms"] == [1.0, 5.5, 5.5, 7.0, 10.0]  # one slow timing (9.0) does not bend it


def test_the_table_is_cached_and_measured_again_when_a_setting_changes(monkeypatch):
    first, _ = _cartpole_table()
    measured = []
    original = LatencyTable.measure.__func__

    def counting(cls, *args, **kwargs):
        measured.append(kwargs.get("batch_size", args[1] if len(args) > 1 else None))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LatencyTable, "measure", classmethod(counting))
    again, _ = _cartpole_table()
    assert measured == [] and again.base == first.base  # read back from the cache
    _cartpole_table(batch_size=4)
    assert len(measured) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        _cartpole_table()
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 2
    fastest, _ = _cartpole_table(statistic="min")
    assert len(measured) == 3 and fastest.settings["statistic"] == "min"
    rounds, _ = _cartpole_table(statistic="min", rounds=2)  # every cell timed twice, the faster kept
    assert len(measured) == 4 and rounds.settings["rounds"] == 2
    _cartpole_table(statistic="min", rounds=2, round_to=8)  # an env that rounds times its own widths
    assert len(measured) == 5
    assert rounds.base == pytest.approx(rounds.entries_sum())
    with pytest.raises(ValueError, match="unknown latency engine"):
        _cartpole_table(engine="tensorrt")
    with pytest.raises(ValueError, match="unknown timing statistic"):
        _cartpole_table(statistic="mean")


def test_a_table_is_timed_at_its_own_thread_count_and_the_process_keeps_its_own(monkeypatch):
    """``threads`` (``env.latency_threads``): a process that trains on every core times its
    table at the count the budget is meant for, and gets its own count back."""
    import prune_env.latency as latency

    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    during = []
    original = latency.time_alternating

    def recording(*args, **kwargs):
        during.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(latency, "time_alternating", recording)
    table, _ = _cartpole_table(threads=other, cache=False)
    assert during == [other] and table.settings["threads"] == other
    assert torch.get_num_threads() == threads
    default, _ = _cartpole_table(cache=False)
    assert during == [other, threads] and default.settings["threads"] == threads
    with pytest.raises(ValueError, match="threads must be at least 1"):
        _cartpole_table(threads=0, cache=False)
    assert torch.get_num_threads() == threads


def test_the_env_and_its_report_use_the_configured_latency_threads(synthetic_table, monkeypatch):
    from experiments.report import BaselineMeasurements
    from prune_env.cli import add_evaluation_arguments, evaluation_overrides
    from prune_env.config import ConfigError, load_config

    asked = []
    built = LatencyTable.build.__func__
    monkeypatch.setattr(LatencyTable, "build", classmethod(
        lambda cls, *a, threads=None, **k: asked.append(threads) or built(cls, *a, **k)))
    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5, latency_threads=1)
    assert asked == [1]
    assert BaselineMeasurements(env).threads == 1  # the final report times at the table's count
    # a FLOPs-budgeted arm of a latency comparison is timed at the same count as the others
    assert BaselineMeasurements(tiny_env("cartpole_policy", latency_threads=1)).threads == 1
    assert BaselineMeasurements(tiny_env("cartpole_policy")).threads is None  # the process's
    parser = argparse.ArgumentParser()
    add_evaluation_arguments(parser)
    assert evaluation_overrides(parser.parse_args(["--latency-threads", "1"]))["latency_threads"] == 1
    assert load_config("cartpole_policy", overrides={"env": {"latency_threads": 1}})["env"]["latency_threads"] == 1
    with pytest.raises(ConfigError, match="env.latency_threads must be at least 1"):
        load_config("cartpole_policy", overrides={"env": {"latency_threads": 0}})


def test_the_fastest_run_is_never_slower_than_the_median_run():
    from prune_env.cost import over_rounds, wall_ms

    # a call that is slow on two runs of three (another process's load): the median sees it, min does not
    def runs():
        while True:
            yield from (0.006, 0.006, 0.0)

    delays = runs()
    call = lambda: time.sleep(next(delays))  # noqa: E731
    assert wall_ms(call, repeats=9, warmup=3, warmup_seconds=0, statistic="min") < 3.0
    assert wall_ms(call, repeats=9, warmup=3, warmup_seconds=0, statistic="median") >= 6.0
    times = np.array([[3.0, 1.0], [1.0, 5.0], [2.0, 2.0]])  # rounds x timers
    assert over_rounds(times, "median").tolist() == [2.0, 2.0] and over_rounds(times, "min").tolist() == [1.0, 1.0]


@pytest.fixture
def synthetic_table(monkeypatch):
    """Tables whose entries follow a known cost (0.01 ms per input x output unit, 0.05 ms
    per block): the clamp tests then do not depend on this machine's timing noise."""

    def build(cls, pruner, name, batch_size=1, engine="torch", device=None, points=6, low=None, statistic="median",
              rounds=1, round_to=None, **_):
        low = list(low) if low is not None else [1] * len(pruner.layers)
        grids = [grid_widths(int(lo), int(u), 4) for lo, u in zip(low, pruner.units, strict=True)]
        first_in = pruner.layers[0].in_units
        blocks = [0.05 + 0.01 * np.outer(grids[i - 1] if i > 0 else [first_in], grids[i]) for i in range(len(grids))]
        tail = 0.05 + 0.01 * grids[-1].astype(float)
        return cls(grids, blocks, tail, {"batch_size": batch_size, "engine": engine, "device": "cpu",
                                         "threads": torch.get_num_threads(), "points": 4, "repeats": 0,
                                         "statistic": statistic, "rounds": rounds, "round_to": round_to})

    monkeypatch.setattr(LatencyTable, "build", classmethod(build))


def test_an_env_rebuilt_from_its_arguments_clamps_on_the_same_table(synthetic_table, monkeypatch):
    """Episode workers rebuild the env from its arguments with other thread counts: they must
    take the main process's table, not time one of their own."""
    from prune_env.env import PruningEnv

    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5)
    monkeypatch.setattr(LatencyTable, "build", classmethod(lambda cls, *a, **k: pytest.fail("timed another table")))
    again = PruningEnv(**env.arguments())
    assert again.latency_table.to_dict() == env.latency_table.to_dict()
    action = np.full(env.n_layers, 0.8)
    assert play_allocation(again, action, seed=0)["keep_counts"] == play_allocation(env, action, seed=0)["keep_counts"]


@pytest.mark.parametrize("budget", [0.4, 0.7])
def test_a_latency_budget_clamps_on_the_predicted_latency(budget, synthetic_table):
    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=budget)
    rng = np.random.default_rng(0)
    for _ in range(10):
        report = play_allocation(env, rng.uniform(0.1, 1.0, env.n_layers), seed=0)
        assert report["latency_budget"] == budget
        assert report["latency_ratio_predicted"] == pytest.approx(
            env.latency_table.predict(report["keep_counts"]) / env.latency_table.base)
        # one unit of the last layer is the finest step: 0.01 ms per unit of its 64 inputs
        assert abs(report["latency_ratio_predicted"] - budget) <= 0.01 * 64 / env.latency_table.base
        assert report["latency_table"]["batch_size"] == 1 and report["latency_table"]["engine"] == "torch"


def test_the_env_builds_its_table_with_the_configured_statistic_and_rounds(synthetic_table):
    from prune_env.config import ConfigError, load_config

    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5)
    assert env.latency_table.settings["statistic"] == "median" and env.latency_table.settings["rounds"] == 1
    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5, latency_statistic="min",
                   latency_table_rounds=3)
    report = play_allocation(env, np.full(env.n_layers, 0.5), seed=0)
    assert report["latency_table"]["statistic"] == "min" and report["latency_table"]["rounds"] == 3
    assert report["latency_table"]["round_to"] is None
    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5, round_to=8)  # the table of its widths
    assert play_allocation(env, np.full(env.n_layers, 0.5), seed=0)["latency_table"]["round_to"] == 8
    with pytest.raises(ConfigError, match="env.latency_statistic 'mean' is unknown; choose one of: median, min"):
        load_config("cartpole_policy", overrides={"env": {"latency_statistic": "mean"}})
    with pytest.raises(ConfigError, match="env.latency_table_rounds must be at least 1"):
        load_config("cartpole_policy", overrides={"env": {"latency_table_rounds": 0}})


@pytest.mark.parametrize("name", ["uniform", "l1", "random"])
def test_heuristics_meet_a_latency_budget(name, synthetic_table):
    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5)
    report = run_episode(env, make_heuristic(name, env, seed=0), seed=0)
    assert abs(report["latency_ratio_predicted"] - 0.5) <= 0.02
    assert report["flops_ratio"] < 1.0


def test_an_unreachable_latency_budget_is_a_user_error_that_says_what_to_do(synthetic_table):
    from prune_env.cli import USER_ERRORS
    from prune_env.env import UnreachableBudgetError

    with pytest.raises(UnreachableBudgetError, match="choose a budget of at least") as caught:
        tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.001)
    assert isinstance(caught.value, USER_ERRORS)  # the scripts print it in one line, exit status 2


def test_bad_latency_budgets_and_networks_give_clear_errors():
    with pytest.raises(ValueError, match="either a flops_budget or a latency_budget"):
        tiny_env("cartpole_policy", flops_budget=0.5, latency_budget=0.5)
    with pytest.raises(ValueError, match="latency_budget must be in"):
        tiny_env("cartpole_policy", flops_budget=None, latency_budget=1.5)
    with pytest.raises(ValueError, match="the 'latency' reward needs a latency_budget"):
        tiny_env("cartpole_policy", reward="latency")
    pruner = make_pruner(CifarResNet(1).eval(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="latency tables cover sequential networks"):
        LatencyTable.measure(pruner, show_progress=False)


@pytest.mark.parametrize("round_to", [None, 8])
def test_latency_compare_checks_budgets_on_the_very_table_the_env_reads(round_to, synthetic_table):
    """The script builds every table before its searches (when checking the budgets): the
    rounded search's too, so that both tables are timed in the same minutes of the host."""
    from experiments.latency_compare import latency_table

    env = tiny_env("cartpole_policy", flops_budget=None, latency_budget=0.5, round_to=round_to, min_keep=0.1)
    checked = latency_table(get_target("cartpole_policy"), 1, {"min_keep": 0.1}, round_to)
    assert checked.to_dict() == env.latency_table.to_dict()
    assert checked.settings["round_to"] == round_to


def test_latency_compare_builds_every_arm_at_its_budget_and_resumes(tmp_path, synthetic_table, pretrained_cartpole):
    from experiments.latency_compare import run_arms, summarize, time_networks
    from prune_env.config import load_config

    target = get_target("cartpole_policy", limit=4)  # 4 evaluation episodes
    config = load_config(target.name, "random_search", overrides={
        "env": {"val_size": 4, "latency_threads": 1}, "search": {"episodes": 3}, "evaluate": {"finetune_epochs": 0}})
    runs = run_arms(target, config, "random_search", [0.5], [1], [0], tmp_path, round_to=8)
    assert [r["arm"] for r in runs] == ["uniform", "flops_search", "flops_search_matched", "latency_search",
                                        "latency_search_r8"]
    reports = {r["arm"]: json.loads((r["folder"] / "report.json").read_text()) for r in runs}
    for arm in ("uniform", "latency_search", "latency_search_r8"):
        assert reports[arm]["latency_budget"] == 0.5
        assert abs(reports[arm]["latency_ratio_predicted"] - 0.5) <= 0.05
    assert reports["flops_search"].get("latency_budget") is None
    assert {r["latency_threads"] for r in reports.values()} == {1}  # every arm timed at the tables' count
    assert reports["flops_search"]["flops_budget"] == pytest.approx(reports["uniform"]["flops_ratio"])
    assert all(c % 8 == 0 or c == u for c, u in zip(reports["latency_search_r8"]["keep_counts"],
                                                     [64, 64], strict=True))
    stamps = [(r["folder"] / "report.json").stat().st_mtime_ns for r in runs]
    run_arms(target, config, "random_search", [0.5], [1], [0], tmp_path, round_to=8)  # all done: nothing re-run
    assert stamps == [(r["folder"] / "report.json").stat().st_mtime_ns for r in runs]
    threads = torch.get_num_threads()
    table = time_networks(target, runs, rounds=1, repeats=3, threads=1)  # at the table's thread count
    assert len(table) == 5 and (table["torch_ms"] > 0).all() and (table["onnxruntime_ms"] > 0).all()
    assert (table["threads"] == 1).all() and torch.get_num_threads() == threads
    assert (table["timing_statistic"] == "median").all()
    # the statistic is the table's: with "min", the fastest of each network's passes
    passes = np.arange(36, dtype=float).reshape(3, 12) + 1  # 3 passes of 6 networks x 2 engines
    with patch("experiments.latency_compare.time_alternating", return_value=passes):
        fastest = time_networks(target, runs, rounds=1, repeats=3, statistic="min")
    # the first pass of networks 1-5 (network 0 is the unpruned one)
    assert fastest["torch_ms"].tolist() == [3.0, 5.0, 7.0, 9.0, 11.0]
    assert fastest["torch_ratio"].tolist() == pytest.approx([3.0, 5.0, 7.0, 9.0, 11.0])
    assert (fastest["timing_statistic"] == "min").all()
    results = summarize(table)
    assert set(results["policy"]) == {r["arm"] for r in runs}
    for _, row in results.iterrows():
        measured = table[table["policy"] == row["policy"]]["torch_ratio"].iloc[0]
        assert row["within_5pct"] == (abs(measured / 0.5 - 1) <= 0.05)


def test_latency_compare_says_when_the_host_ran_at_another_speed_than_its_table(synthetic_table):
    """A table's fractions hold at the host speed it was timed at: the report compares the
    unpruned network's timing with the table's and warns beyond 10%."""
    import pandas as pd

    from experiments.latency_compare import host_drift, latency_table

    target = get_target("cartpole_policy")
    base = latency_table(target, 1, {"min_keep": 0.1}).base
    timings = pd.DataFrame({"batch": [1, 1, 64], "torch_base_ms": [base * 1.04, base * 1.04, base * 1.25]})
    quiet, = host_drift(target, [1], {"min_keep": 0.1}, timings)
    assert "(+4.0%)" in quiet and "rebuild" not in quiet
    slow, = host_drift(target, [64], {"min_keep": 0.1}, timings.assign(torch_base_ms=base * 0.8))
    assert "(-20.0%)" in slow and "rebuild the tables in a quiet hour" in slow


def test_the_landing_check_takes_each_networks_median_over_timing_sessions(tmp_path):
    import pandas as pd

    from experiments.latency_compare import over_sessions, record_session, summarize

    def session(ratios):
        return pd.DataFrame({"batch": 1, "latency_budget": 0.5, "policy": ["uniform", "latency_search"], "seed": 0,
                             "metric_finetuned": [0.80, 0.82], "flops_ratio": [0.3, 0.4], "predicted_ratio": 0.5,
                             "torch_base_ms": 10.0, "torch_ms": [10.0 * r for r in ratios], "torch_ratio": ratios,
                             "onnxruntime_ratio": 0.4})

    record_session(tmp_path, session([0.44, 0.59]), "first")  # a fast and a slow outlier
    record_session(tmp_path, session([0.49, 0.50]), "second")
    history = record_session(tmp_path, session([0.50, 0.48]), "third")
    assert len(history) == 6 and list(history["session"].unique()) == ["first", "second", "third"]
    rows = over_sessions(history).set_index("policy")
    assert rows.loc["uniform", "torch_ratio"] == pytest.approx(0.49)
    assert rows.loc["latency_search", "torch_ratio"] == pytest.approx(0.50)
    assert rows.loc["latency_search", "torch_ms"] == pytest.approx(5.0)
    assert (rows["sessions"] == 3).all() and rows.loc["latency_search", "torch_ratio_high"] == pytest.approx(0.59)
    assert rows.loc["uniform", "metric_finetuned"] == pytest.approx(0.80)  # what is not timed stays as it was
    summary = summarize(over_sessions(history)).set_index("policy")
    # the first session alone lands neither network; the medians land both
    assert summary["within_5pct"].tolist() == [1, 1] and (summary["sessions"] == 3).all()


def test_alternating_passes_run_every_call_once_in_a_fresh_order():
    from prune_env.cost import time_alternating

    ran = []
    calls = [lambda i=i: ran.append(i) for i in range(5)]
    times = time_alternating(calls, passes=6, warmup=1)
    assert ran[:5] == [0, 1, 2, 3, 4]  # the warm-up runs each call first
    passes = [ran[5 + 5 * p: 10 + 5 * p] for p in range(6)]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # the order changes between passes
    assert times.shape == (6, 5) and (times >= 0).all()
    with pytest.raises(ValueError, match="passes"):
        time_alternating(calls, passes=0)


def test_alternating_passes_spread_a_slow_spell_over_every_call(fake_clock):
    """A machine three times slower for its first 30 ms: calls of 1, 2 and 3 ms timed back to
    back let the spell lift the first one alone; alternating passes keep their ratios."""
    from prune_env import cost

    clock = fake_clock

    def call(ms):
        def run():
            clock[0] += ms * (3 if clock[0] < 0.030 else 1) / 1000
        return run

    calls = [call(1.0), call(2.0), call(3.0)]
    back_to_back = np.array([cost.wall_ms(c, repeats=9, warmup=0, warmup_seconds=0) for c in calls])
    assert back_to_back[1] / back_to_back[0] < 1  # the spell made the 2-ms call look faster than the 1-ms one
    clock[0] = 0.0
    alternating = cost.over_rounds(cost.time_alternating(calls, passes=9, warmup=0), "median")
    assert alternating / alternating[0] == pytest.approx([1.0, 2.0, 3.0])


def test_the_table_check_reports_both_errors_against_alternating_timings(monkeypatch):
    from experiments import latency_error

    table, pruner = _cartpole_table()
    monkeypatch.setattr(latency_error.LatencyTable, "build", lambda *a, **k: table)
    target = get_target("cartpole_policy")
    rows = latency_error.table_errors(target, pruner.model, [1], 3, "torch", rounds=2)
    assert [r["allocation"] for r in rows] == [0, 1, 2, 3]
    base = rows[0]
    assert base["ratio_error"] == 0 and base["keep_counts"] == [int(u) for u in pruner.units]
    for r in rows:
        assert r["measured_ms"] > 0 and r["spread"] >= 0 and r["rounds"] == 2
        assert r["error"] == pytest.approx(r["predicted_ms"] / r["measured_ms"] - 1, abs=1e-4)
        # the fraction of the unpruned latency: predicted over measured
        expected = (r["predicted_ms"] / base["predicted_ms"]) / (r["measured_ms"] / base["measured_ms"]) - 1
        assert r["ratio_error"] == pytest.approx(expected, abs=1e-4)
