"""Evaluation modes, the measurement cache, rank statistics and the fidelity script."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_env import _hash, tiny_env
from torch import nn
from torch.nn import functional as F

from prune_env.evaluation import AdaptiveBN, make_evaluation
from prune_env.ranking import average_ranks, kendall_tau, spearman_rho
from target_models import CheckpointError, get_target
from target_models.checkpoints import CHECKPOINTS_ENV
from tests.helpers import REPO, needs_data, script_env


def _play(env, ratios):
    env.reset(seed=0)
    for r in ratios:
        _, reward, terminated, _, info = env.step(np.array([r], dtype=np.float32))
    assert terminated
    return reward, info["report"]


@pytest.mark.parametrize("name", ["cartpole_policy", pytest.param("vgg16_cifar10", marks=needs_data)])
def test_plain_reward_is_the_validation_metric_straight_after_surgery(name):
    env = tiny_env(name, evaluation="plain", flops_budget=None, reward="tradeoff", reward_kwargs={"weight": 0.0})
    ratios = np.linspace(0.4, 0.9, env.n_layers)
    reward, report = _play(env, ratios)
    model = env.pruner.prune_counts(report["keep_counts"], "l1")
    expected = env.target.evaluator("val", env_val_size(name))(model) / env.metric_scale
    assert reward == expected and report["evaluation"] == "plain"


def env_val_size(name: str) -> int:
    return 4 if name == "cartpole_policy" else 64


@needs_data
def test_adaptive_bn_changes_only_batch_norm_buffers_of_the_pruned_copy():
    env = tiny_env("vgg16_cifar10", evaluation="adaptive_bn", bn_calibration_size=32)
    before = _hash(env.model)
    _, report = _play(env, [0.5] * env.n_layers)
    measured = env.last_model.state_dict()
    plain = env.pruner.prune_counts(report["keep_counts"], "l1").state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], measured[k])}
    assert changed, "adaptive_bn re-estimated nothing"
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in changed)
    assert _hash(env.model) == before, "the pretrained model was modified"
    assert report["evaluation"] == "adaptive_bn" and report["bn_calibration_size"] == 32


class _BNTarget:
    """Just enough of a target for AdaptiveBN: a fixed calibration slice."""

    eval_autocast = False

    def __init__(self, x):
        self.x = x

    def bn_calibration_inputs(self, n):
        return self.x[:n]


def test_adaptive_bn_re_estimates_the_exact_statistics_of_the_slice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(144, 5), nn.BatchNorm1d(5),
                          nn.BatchNorm1d(5, track_running_stats=False))
    model[1].running_mean.fill_(5.0)
    x = torch.randn(41, 3, 8, 8)  # 41 over batches of 16: three near-equal batches
    AdaptiveBN(_BNTarget(x), size=41, batch_size=16).prepare(model)
    with torch.no_grad():
        conv = model[0](x)
        features = conv.transpose(0, 1).reshape(4, -1)
        # the second batch norm sees the first one normalising each batch with its own statistics
        dense = torch.cat([model[4:6](F.relu(F.batch_norm(c, None, None, model[1].weight, model[1].bias,
                                                               training=True)))
                           for c in torch.tensor_split(conv, 3)])
    torch.testing.assert_close(model[1].running_mean, features.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, features.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[6].running_mean, dense.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[6].running_var, dense.var(0, unbiased=True), rtol=1e-4, atol=1e-5)
    assert int(model[1].num_batches_tracked) == 3 and model[7].running_mean is None
    assert not model.training and not any(m.training for m in model.modules())


@needs_data
def test_finetune_mode_is_reproducible_and_leaves_the_pretrained_model_alone():
    env = tiny_env("cnn_cifar10", evaluation="finetune", finetune_steps=2, cache=False)
    before = _hash(env.model)
    rng_state = torch.get_rng_state()
    first, report = _play(env, [0.5] * env.n_layers)
    assert torch.equal(torch.get_rng_state(), rng_state), "the finetune mode moved torch's global RNG"
    second, _ = _play(env, [0.5] * env.n_layers)
    plain = env.pruner.prune_counts(report["keep_counts"], "l1")
    assert first == second and report["finetune_steps"] == 2
    assert not torch.equal(plain[0].weight, env.last_model[0].weight), "no optimiser step was taken"
    assert _hash(env.model) == before


def test_unknown_evaluation_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="plain, adaptive_bn, finetune"):
        make_evaluation("adaptive", target=None)


def test_a_cache_hit_returns_the_same_report_and_model_as_a_fresh_measurement():
    cached = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff")
    fresh = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff", cache=False)
    ratios = [0.5, 0.75]
    _, first = _play(cached, ratios)
    first_model = {k: v.clone() for k, v in cached.last_model.state_dict().items()}
    _, hit = _play(cached, ratios)
    _, measured = _play(fresh, ratios)
    assert (cached.cache_hits, cached.cache_misses) == (1, 1) and fresh.cache_hits == 0
    assert hit == first == measured
    rebuilt = cached.last_model.state_dict()  # rebuilt on demand after the hit
    assert all(torch.equal(first_model[k], rebuilt[k]) for k in first_model)
    _, other = _play(cached, [0.25, 0.75])
    assert cached.cache_misses == 2 and other["keep_counts"] != first["keep_counts"]


def test_the_random_criterion_is_never_cached():
    env = tiny_env("cartpole_policy", flops_budget=None, reward="tradeoff", criterion="random")
    _play(env, [0.5, 0.5])
    _play(env, [0.5, 0.5])
    assert env.cache_hits == 0


def test_rank_statistics_on_rankings_with_known_answers():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, [10, 20, 30, 40, 50]) == 1.0 and spearman_rho(x, [1, 4, 9, 16, 25]) == 1.0
    assert kendall_tau(x, x[::-1]) == -1.0 and spearman_rho(x, x[::-1]) == -1.0
    # 6 concordant and 4 discordant pairs; sum of squared rank differences 16
    assert kendall_tau(x, [3, 4, 1, 2, 5]) == pytest.approx(0.2)
    assert spearman_rho(x, [3, 4, 1, 2, 5]) == pytest.approx(1 - 6 * 16 / (5 * 24))
    # tau-b with a tie: S = 5 over sqrt(5 untied pairs * 6 untied pairs)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_a_checkpoint_you_already_have_is_used_from_a_flag_or_a_folder(isolated_home, tmp_path, monkeypatch):
    target = get_target("cartpole_policy")
    target.pretrain(epochs=1, show_progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.move(target.checkpoint_path, mine / "cartpole_policy.pt")
    assert not get_target("cartpole_policy").has_checkpoint()
    assert get_target("cartpole_policy", checkpoint=mine / "cartpole_policy.pt").has_checkpoint()
    monkeypatch.setenv(CHECKPOINTS_ENV, str(mine))
    assert get_target("cartpole_policy").checkpoint_path == mine / "cartpole_policy.pt"
    assert get_target("lstm_imdb").checkpoint_path.parent == isolated_home / "checkpoints"  # not there: default
    with pytest.raises(CheckpointError, match="pretraining writes to"):
        get_target("cartpole_policy", checkpoint=mine / "cartpole_policy.pt").pretrain(epochs=1)
    monkeypatch.setenv(CHECKPOINTS_ENV, str(mine / "cartpole_policy.pt"))
    with pytest.raises(CheckpointError, match="is not a folder"):
        get_target("cartpole_policy").has_checkpoint()
    monkeypatch.delenv(CHECKPOINTS_ENV)
    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "--target", "cartpole_policy", "--policy", "l1",
         "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")],
        cwd=REPO, env=script_env(isolated_home), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "missing.pt: no such file" in result.stderr


def _fidelity_command(out) -> list[str]:
    return [sys.executable, "scripts/proxy_fidelity.py", "--target", "cartpole_policy", "--candidates", "3",
            "--finetune-epochs", "0.2", "--val-size", "4", "--finetune-steps", "3", "--out", str(out)]


def _run_fidelity(home, command: list[str]) -> subprocess.CompletedProcess:
    get_target("cartpole_policy").pretrain(epochs=1, show_progress=False)
    return subprocess.run(command, cwd=REPO, env=script_env(home), capture_output=True, text=True, timeout=300)


def test_proxy_fidelity_script_measures_every_mode(isolated_home, tmp_path):
    out = tmp_path / "fid"
    result = _run_fidelity(isolated_home, _fidelity_command(out))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "fidelity.json").read_text())
    assert summary["candidates"] == 6  # uniform, l1, ngf and three random allocations
    assert set(summary["modes"]) == {"plain", "adaptive_bn", "finetune"}
    # no batch norm in the policy MLP: adaptive_bn must score exactly as plain
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert all(r["score_adaptive_bn"] == r["score_plain"] for r in rows)
    assert all(abs(r["flops_ratio"] - 0.5) < 0.02 for r in rows)
    assert all(r["seconds_finetune"] != r["seconds_ground_truth"] for r in rows)  # two timings, not one
    assert "Kendall tau" in result.stdout
    truth = [r["metric_finetuned_test"] for r in rows]
    for name, mode in summary["modes"].items():  # each mode's tau is that of its own scores
        assert mode["kendall_tau"] == pytest.approx(kendall_tau([r[f"score_{name}"] for r in rows], truth), nan_ok=True)


@pytest.mark.slow  # three fidelity runs: about 18 s
def test_proxy_fidelity_script_resumes_and_refuses_other_settings(isolated_home, tmp_path):
    out = tmp_path / "fid"
    command = _fidelity_command(out)
    assert _run_fidelity(isolated_home, command).returncode == 0
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    kept = (out / "candidates.jsonl").read_text().splitlines()[:3]
    (out / "candidates.jsonl").write_text("\n".join(kept) + '\n{"candidate": "cut sho')  # interrupted
    again = _run_fidelity(isolated_home, command)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [r["candidate"] for r in resumed] == [r["candidate"] for r in rows]
    assert [r["metric_finetuned_test"] for r in resumed] == [r["metric_finetuned_test"] for r in rows]
    truth = [r["metric_finetuned_test"] for r in resumed]
    summary = json.loads((out / "fidelity.json").read_text())
    assert summary["modes"]["plain"]["kendall_tau"] == pytest.approx(
        kendall_tau([r["score_plain"] for r in resumed], truth), nan_ok=True)
    other = _run_fidelity(isolated_home, [*command, "--flops-budget", "0.7"])
    assert other.returncode == 2 and "other settings" in other.stderr


def test_rescoring_finished_runs_rebuilds_their_networks_against_their_recorded_metric(pretrained_cartpole, tmp_path):
    from agents.base import run_episode
    from agents.heuristics import make_heuristic
    from experiments.fidelity import rescore_runs
    from prune_env.cli import UsageError
    from prune_env.env import PruningEnv

    target = get_target("cartpole_policy")
    config = {"val_size": 4, "calibration_size": 16, "criterion": "l1"}
    env = PruningEnv(target, flops_budget=0.5, **config)
    runs = tmp_path / "compare" / "runs"
    recorded = []
    for k in range(4):
        record = run_episode(env, make_heuristic("random", env, seed=k))
        report = {**record, "policy": "random" if k == 0 else "random_search", "seed": k,
                  "metric_finetuned": 100.0 + 10 * k,
                  "finetune_epochs": 1.0, "finetune_epochs_total": 1.0}
        if k == 3:  # reached in rounds: fine-tuned between them, not rebuilt by surgery
            report["finetune_epochs"] = 1 / 3
        (runs / f"random-b0.5-s{k}").mkdir(parents=True)
        (runs / f"random-b0.5-s{k}" / "report.json").write_text(json.dumps(report))
        recorded.append(report)
    other = runs / "random-b0.7-s0"  # another budget
    other.mkdir()
    (other / "report.json").write_text(json.dumps({**recorded[0], "flops_budget": 0.7}))
    in_rounds = runs / "ppo+rounds-b0.5-s0"  # reached in rounds, though its epochs add up
    in_rounds.mkdir()
    (in_rounds / "report.json").write_text(json.dumps({**recorded[1], "policy": "ppo+rounds"}))

    # the same comparison listed twice counts its networks once
    summary = rescore_runs(target, config, 0.5, [tmp_path / "compare", runs], tmp_path / "out", modes=("plain",),
                           show_progress=False)
    rows = {r["candidate"]: r for r in _csv_rows(tmp_path / "out" / "candidates.csv")}
    assert sorted(rows) == [f"compare/random-b0.5-s{k}" for k in range(3)] and summary["candidates"] == 3
    assert summary["runs_left_out"] == {"another FLOPs budget": 2, "reached in rounds": 4, "listed twice": 3}
    for k in range(3):  # the same network: plain scores it as its run's environment did
        assert float(rows[f"compare/random-b0.5-s{k}"]["score_plain"]) == pytest.approx(
            recorded[k]["metric_pruned_val"])
    assert summary["modes"]["plain"]["kendall_tau"] == pytest.approx(
        kendall_tau([recorded[k]["metric_pruned_val"] for k in range(3)], [100.0, 110.0, 120.0]), nan_ok=True)
    assert summary["searched_candidates"] == 2  # the searches' networks alone, without the heuristic's
    assert summary["modes_searched"]["plain"]["kendall_tau"] == pytest.approx(
        kendall_tau([recorded[k]["metric_pruned_val"] for k in (1, 2)], [110.0, 120.0]), nan_ok=True)
    (runs / "random-b0.5-s0" / "report.json").write_text(json.dumps({**recorded[0], "metric_base_val": -1.0}))
    with pytest.raises(UsageError, match="with the checkpoint"):
        rescore_runs(target, config, 0.5, [runs], tmp_path / "out", modes=("plain",), show_progress=False)
    # units ranked by activation on another calibration slice would be rebuilt differently
    (runs / "random-b0.5-s0" / "report.json").write_text(
        json.dumps({**recorded[0], "criterion": "activation", "kept_units": None}))
    (runs / "random-b0.5-s0" / "config.json").write_text(json.dumps({"env": {"calibration_size": 999}}))
    with pytest.raises(UsageError, match="ranked units by activation on 999 calibration examples"):
        rescore_runs(target, config, 0.5, [runs], tmp_path / "out", modes=("plain",), show_progress=False)


def _csv_rows(path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))
