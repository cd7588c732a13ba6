"""User mistakes end in one clear line and exit code 2, before any work starts; every flag
has help that shows its default; command-line choices come from the registries."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, script_env

SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))
CARTPOLE = ["--target", "cartpole_policy", "--limit", "64"]
TRAIN = ["scripts/train_agent.py", *CARTPOLE]
EVALUATE = ["scripts/evaluate.py", *CARTPOLE]
COMPARE = ["scripts/compare.py", *CARTPOLE]
DURING = ["scripts/train_with_pruning.py"]

# (id, command line with {w} for a scratch folder, what stderr must say). Every one must be
# refused by the argument checks, before any pretraining, data loading, search or download.
MISTAKES = [
    ("budget-above-1", [*TRAIN, "--flops-budget", "1.5", "--out", "{w}/new"], "--flops-budget must lie in (0, 1], got 1.5"),
    ("budget-0", [*TRAIN, "--flops-budget", "0", "--out", "{w}/new"], "--flops-budget must lie in (0, 1], got 0.0"),
    ("budget-below-min-keep", [*TRAIN, "--flops-budget", "0.01", "--out", "{w}/new"],
     "--flops-budget 0.01 is below the"),
    ("episodes-0", [*TRAIN, "--episodes", "0", "--out", "{w}/new"], "--episodes must be at least 1, got 0"),
    ("episodes-negative", [*TRAIN, "--episodes", "-5", "--out", "{w}/new"], "--episodes must be at least 1, got -5"),
    ("reselect-negative", [*TRAIN, "--reselect-top", "-1", "--out", "{w}/new"], "--reselect-top must be at least 0, got -1"),
    ("finetune-steps-0", [*TRAIN, "--finetune-steps", "0", "--out", "{w}/new"],
     "--finetune-steps must be at least 1, got 0"),
    ("round-to-0", [*TRAIN, "--round-to", "0", "--out", "{w}/new"], "--round-to must be at least 1, got 0"),
    ("round-to-too-coarse", [*TRAIN, "--round-to", "64", "--flops-budget", "0.3", "--out", "{w}/new"],
     "--flops-budget 0.3 is below the 1.000 that min_keep=0.1 and round_to=64 allow"),
    ("tolerance-negative", [*TRAIN, "--budget-tolerance", "-0.1", "--out", "{w}/new"],
     "--budget-tolerance must lie in [0, 1), below the budget, got -0.1"),
    ("tolerance-above-budget", [*TRAIN, "--flops-budget", "0.2", "--budget-tolerance", "0.3", "--out", "{w}/new"],
     "env.budget_tolerance must lie in [0, budget)"),
    ("two-budgets", [*TRAIN, "--flops-budget", "0.5", "--latency-budget", "0.5", "--out", "{w}/new"],
     "--flops-budget and --latency-budget exclude each other"),
    ("latency-budget-above-1", [*TRAIN, "--latency-budget", "1.5", "--out", "{w}/new"],
     "--latency-budget must lie in (0, 1], got 1.5"),
    ("unknown-agent", [*TRAIN, "--agent", "dqn", "--out", "{w}/new"], "invalid choice: 'dqn'"),
    ("unknown-target", ["scripts/train_agent.py", "--target", "vgg", "--out", "{w}/new"], "unknown target 'vgg'"),
    ("limit-0", ["scripts/train_agent.py", "--target", "cartpole_policy", "--limit", "0", "--out", "{w}/new"],
     "argument --limit: must be at least 1, got 0"),
    ("out-is-a-file", [*TRAIN, "--out", "{w}/file.txt"], "--out {w}/file.txt is a file"),
    ("out-is-a-run", [*TRAIN, "--out", "{w}/run"], "already holds a run; pass --resume to continue it or --force"),
    ("resume-nothing", [*TRAIN, "--resume", "--out", "{w}/new"], "holds no run to continue"),
    ("config-unknown-key", [*TRAIN, "--config", "{w}/typo.yaml", "--out", "{w}/new"],
     "unknown key 'flops_budgte' in section env; valid keys: flops_budget, reward"),
    ("config-wrong-type", [*TRAIN, "--config", "{w}/wrong_type.yaml", "--out", "{w}/new"],
     "env.min_keep must be a number, got 'lots'"),
    ("config-missing", [*TRAIN, "--config", "{w}/missing.yaml", "--out", "{w}/new"], "no such file"),
    ("policy-L1", [*EVALUATE, "--policy", "L1", "--out", "{w}/eval"],
     "unknown policy 'L1' (did you mean l1?): the heuristics are uniform, l1, ngf"),
    ("policy-report-json", [*EVALUATE, "--policy", "{w}/run/report.json", "--out", "{w}/eval"],
     "{w}/run/report.json is not a saved agent"),
    ("policy-not-a-checkpoint", [*EVALUATE, "--policy", "{w}/run/agent.pt", "--out", "{w}/eval"],
     "cannot read {w}/run/agent.pt as a saved agent"),
    ("policy-run-without-agent", [*EVALUATE, "--policy", "{w}/run", "--out", "{w}/eval"], "holds no saved agent"),
    ("widths-not-numbers", [*EVALUATE, "--widths", "64,x", "--out", "{w}/eval"],
     "expected whole numbers separated by commas, got '64,x'"),
    ("widths-and-policy", [*EVALUATE, "--policy", "l1", "--widths", "4,4", "--out", "{w}/eval"],
     "argument --widths: not allowed with argument --policy"),
    ("rounds-0", [*EVALUATE, "--policy", "l1", "--rounds", "0", "--out", "{w}/eval"], "--rounds must be at least 1, got 0"),
    ("rounds-ngf-scheduled", [*EVALUATE, "--policy", "ngf_scheduled", "--rounds", "2", "--out", "{w}/eval"],
     "--rounds: ngf_scheduled prunes in rounds of its own"),
    ("evaluate-budget", [*EVALUATE, "--policy", "l1", "--flops-budget", "2", "--out", "{w}/eval"],
     "--flops-budget must lie in (0, 1], got 2.0"),
    ("evaluate-out-is-a-file", [*EVALUATE, "--policy", "l1", "--out", "{w}/file.txt"], "is a file"),
    ("evaluate-out-has-results", [*EVALUATE, "--policy", "l1", "--out", "{w}/run"],
     "already holds results (report.json); pass --force"),
    ("seeds-0", [*COMPARE, "--seeds", "0", "--out", "{w}/cmp"], "--seeds must be at least 1, got 0"),
    ("compare-unknown-agent", [*COMPARE, "--train-agents", "ppo,sac", "--out", "{w}/cmp"], "unknown agents ['sac']"),
    ("compare-unknown-heuristic", [*COMPARE, "--heuristics", "l1,L2", "--out", "{w}/cmp"],
     "unknown heuristics ['L2']; choose from uniform, l1"),
    ("compare-budgets", [*COMPARE, "--flops-budgets", "0.3,1.4", "--out", "{w}/cmp"],
     "--flops-budgets must lie in (0, 1]"),
    ("compare-runs-missing", [*COMPARE, "--runs", "{w}/new", "--out", "{w}/cmp"], "holds no report.json"),
    ("candidates-1", ["scripts/proxy_fidelity.py", *CARTPOLE, "--candidates", "1", "--out", "{w}/fid"],
     "--candidates must be at least 2, got 1"),
    ("fidelity-runs-with-candidates", ["scripts/proxy_fidelity.py", *CARTPOLE, "--runs", "{w}/run", "--candidates", "5",
                                       "--out", "{w}/fid2"], "--candidates only apply to random candidates"),
    ("rl-episodes-negative", [*DURING, "--task", "rl", "--episodes", "-5"], "--episodes must be at least 1, got -5"),
    ("supervised-epochs-0", [*DURING, "--task", "supervised", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    ("schedule-beyond-episodes", [*DURING, "--task", "rl", "--episodes", "100", "--pruning-method", "ngf_scheduled",
                                  "--pruning-start", "200", "--pruning-end", "600"],
     "prunes last after period 600, beyond the run's 100 episodes"),
    ("critical-period-beyond-epochs", [*DURING, "--task", "supervised", "--epochs", "3", "--pruning-method", "ngf",
                                       "--critical-start", "3"], "beyond the run's 3 epochs"),
    ("keep-fraction-0", [*DURING, "--task", "rl", "--keep-fraction", "0"], "--keep-fraction must lie in (0, 1]"),
    ("prune-fraction-1", [*DURING, "--task", "rl", "--pruning-method", "magnitude", "--prune-fraction", "1"],
     "--prune-fraction must lie in [0, 1)"),
    ("sweep-fractions", ["scripts/sweep.py", *CARTPOLE, "--method", "l1", "--fractions", "0,0.5", "--out", "{w}/sw"],
     "--fractions must lie in (0, 1)"),
    ("bench-latency-budgets", ["scripts/bench_latency.py", *CARTPOLE, "--flops-budgets", "0.5,2"],
     "--flops-budgets must lie in (0, 1]"),
    ("export-not-a-run", ["scripts/export.py", "--run", "{w}/new"], "{w}/new/config.json not found"),
    ("evaluate-run-of-another-target", ["scripts/evaluate.py", *CARTPOLE, "--policy", "{w}/cnn_run", "--out",
                                        "{w}/eval"], "is a run on cnn_cifar10, not cartpole_policy: pass --target"),
    ("compare-runs-of-another-target", ["scripts/compare.py", *CARTPOLE, "--runs", "{w}/cnn_run", "--out", "{w}/cmp"],
     "is a run on cnn_cifar10, not cartpole_policy; compare runs of one target"),
    ("pretrain-resume-and-force", ["scripts/pretrain.py", *CARTPOLE, "--resume", "--force"],
     "--resume continues the checkpoint and --force replaces it; pass one of them"),
    ("pretrain-epochs-0", ["scripts/pretrain.py", *CARTPOLE, "--epochs", "0"], "--epochs must be above 0, got 0.0"),
    ("device-unknown", ["scripts/pretrain.py", *CARTPOLE, "--device", "tpu"], "unknown device 'tpu'; choose one of"),
    ("latency-budget-on-a-resnet", ["scripts/train_agent.py", "--target", "resnet56_cifar10", "--limit", "64",
                                    "--latency-budget", "0.5", "--out", "{w}/new"],
     "the latency table covers sequential networks only, and resnet56_cifar10 is pruned through a dependency graph"),
    *([] if torch.cuda.is_available() else [
        ("device-missing", [*TRAIN, "--device", "cuda", "--out", "{w}/new"], "this machine has no CUDA GPU")]),
]


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory) -> tuple[Path, Path, dict[str, subprocess.CompletedProcess]]:
    """Every mistake run in its own process, forked from one interpreter that imported torch
    once (``tests/fork_scripts.py``): the scratch folder, the home folder and each command's result."""
    w = tmp_path_factory.mktemp("mistakes")
    home = tmp_path_factory.mktemp("home")
    (w / "file.txt").write_text("x")
    (w / "run").mkdir()
    (w / "run" / "config.json").write_text("{}")
    (w / "run" / "report.json").write_text("{}")
    (w / "run" / "agent.pt").write_text('{"not": "a checkpoint"}')
    (w / "cnn_run" / "checkpoint").mkdir(parents=True)  # a finished run of another target
    (w / "cnn_run" / "config.json").write_text('{"target": "cnn_cifar10", "agent_kind": "random_search"}')
    (w / "cnn_run" / "report.json").write_text('{"target": "cnn_cifar10", "keep_ratios": [0.5, 0.5, 0.5]}')
    torch.save({"kind": "random_search"}, w / "cnn_run" / "checkpoint" / "agent_random_search.pt")
    (w / "typo.yaml").write_text("env:\n  flops_budgte: 0.4\n")
    (w / "wrong_type.yaml").write_text("env:\n  min_keep: lots\n")

    commands = [[name, [a.format(w=w) for a in command]] for name, command, _ in MISTAKES]
    ran = subprocess.run([sys.executable, str(REPO / "tests" / "fork_scripts.py")], cwd=REPO, env=script_env(home),
                         input=json.dumps(commands), capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    results = {name: subprocess.CompletedProcess(command, *outcome)
               for (name, command), outcome in zip(commands, (json.loads(ran.stdout)[n] for n, _ in commands),
                                                   strict=True)}
    return w, home, results


@pytest.mark.parametrize("name, command, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_ends_in_one_line_before_any_work(mistakes, name, command, message):
    w, home, results = mistakes
    result = results[name]
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(w=w) in lines[0] and "Traceback" not in result.stderr
    assert "weights_only" not in result.stderr
    assert not (home / "checkpoints").exists() or not any((home / "checkpoints").iterdir()), "pretrained first"
    assert not (w / "new").exists() and not (w / "eval").exists() and not (w / "cmp").exists()


@cache
def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name[:-3]}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parser(name: str) -> argparse.ArgumentParser:
    return _script(name).build_parser()


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_has_help_that_shows_its_default(name):
    parser = _parser(name)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name}: {action.option_strings} has no help"
        if not action.required:
            assert "default" in formatter._get_help_string(action), f"{name}: {action.option_strings} hides its default"
    text = parser.format_help()
    assert "(default: None)" not in text and parser.description in text


def test_choices_come_from_the_registries():
    from agents import HEURISTICS
    from agents.search import AGENTS
    from experiments.train_with_pruning import DATASETS, MODELS
    from prune_env.during_training import PRUNERS
    from prune_env.evaluation import EVALUATIONS
    from prune_env.importance import CRITERIA
    from prune_env.rewards import REWARDS

    def choices(script: str, flag: str) -> list:
        return next(a.choices for a in _parser(script)._actions if flag in a.option_strings)

    assert choices("train_agent.py", "--agent") == list(AGENTS)
    assert choices("train_agent.py", "--reward") == list(REWARDS)
    assert choices("train_agent.py", "--evaluation") == list(EVALUATIONS)
    assert choices("evaluate.py", "--criterion") == list(CRITERIA)
    assert choices("inspect_target.py", "--criterion") == list(CRITERIA)
    assert choices("bench_env.py", "--agent") == ["random", *AGENTS]
    assert choices("train_with_pruning.py", "--pruning-method") == list(PRUNERS)
    assert choices("train_with_pruning.py", "--dataset") == list(DATASETS)
    assert choices("train_with_pruning.py", "--model") == list(MODELS)
    assert all(h in _parser("evaluate.py").format_help() for h in HEURISTICS)


@pytest.mark.parametrize("method", ["none", "ngf", "ngf_scheduled", "magnitude"])
def test_every_pruner_is_built_from_its_flags(method):
    from prune_env.during_training import PRUNERS

    script = _script("train_with_pruning.py")
    args = script.build_parser().parse_args(["--task", "rl", "--pruning-method", method])
    assert set(script.pruner_flags(PRUNERS[method]).values()) <= set(vars(args))
    assert type(script.make_pruner(args)) is PRUNERS[method]


def test_help_runs_as_a_script():
    result = subprocess.run([sys.executable, "scripts/train_agent.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "(default: ppo)" in result.stdout and "--flops-budget" in result.stdout


def test_an_interrupt_says_whether_anything_was_saved(tmp_path, capsys, monkeypatch):
    from experiments.report import write_report
    from prune_env.cli import run_main
    from prune_env.files import write_json
    from target_models import checkpoints

    monkeypatch.setattr(checkpoints, "SAVED_THIS_PROCESS", [])

    def interrupted_early():
        raise KeyboardInterrupt

    def interrupted_after_a_save():
        checkpoints.atomic_save({"step": 1}, tmp_path / "state.pt")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        run_main(interrupted_early)
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(interrupted_after_a_save)
    err = capsys.readouterr().err
    assert "progress so far is saved" in err and "state.pt" in err

    def interrupted_after_a_finished_run():
        write_json(tmp_path / "runs" / "uniform" / "config.json", {})  # written first, not progress
        write_report(tmp_path / "runs" / "uniform", {"policy": "uniform"}, {})
        write_json(tmp_path / "runs" / "ppo" / "config.json", {})
        raise KeyboardInterrupt

    checkpoints.SAVED_THIS_PROCESS.clear()
    with pytest.raises(SystemExit):
        run_main(interrupted_after_a_finished_run)
    err = capsys.readouterr().err
    assert "progress so far is saved" in err and str(tmp_path / "runs" / "uniform" / "report.json") in err


def test_files_written_together_are_finished_before_an_interrupt_lands():
    from target_models.checkpoints import interrupts_held

    written, previous = [], signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                written += ["agent", "search state"]
        assert written == ["agent", "search state"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
