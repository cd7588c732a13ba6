"""User mistakes end in one clear line and exit code 2, before any work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, script_env


def _run(isolated_home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=script_env(isolated_home),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags, message", [
    (["--flops-budget", "1.5"], "--flops-budget must lie in (0, 1], got 1.5"),
    (["--flops-budget", "0"], "--flops-budget must lie in (0, 1], got 0.0"),
    (["--flops-budget", "0.01"], "is below the"),
    (["--episodes", "0"], "--episodes must be at least 1, got 0"),
    (["--episodes", "-5"], "--episodes must be at least 1, got -5"),
    (["--finetune-steps", "0"], "--finetune-steps must be at least 1, got 0"),
    (["--agent", "dqn"], "invalid choice: 'dqn'"),
])
def test_train_agent_rejects_bad_input_before_pretraining(isolated_home, tmp_path, flags, message):
    result = _run(isolated_home, "scripts/train_agent.py", "--target", "cartpole_policy",
                  "--out", str(tmp_path / "run"), *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (isolated_home / "checkpoints" / "cartpole_policy.pt").exists(), "pretrained before checking"


def test_train_agent_refuses_a_file_or_an_existing_run_as_out(isolated_home, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    result = _run(isolated_home, "scripts/train_agent.py", "--target", "cartpole_policy", "--out", str(a_file))
    assert result.returncode == 2 and "is a file" in result.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    result = _run(isolated_home, "scripts/train_agent.py", "--target", "cartpole_policy", "--out", str(run))
    assert result.returncode == 2 and "--resume to continue it or --force" in result.stderr
    result = _run(isolated_home, "scripts/train_agent.py", "--target", "cartpole_policy", "--resume",
                  "--out", str(tmp_path / "none"))
    assert result.returncode == 2 and "holds no run to continue" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["scripts/compare.py", "--target", "cartpole_policy", "--seeds", "0", "--out", "x"],
     "--seeds must be at least 1, got 0"),
    (["scripts/compare.py", "--target", "cartpole_policy", "--train-agents", "ppo,sac", "--out", "x"],
     "unknown agents ['sac']"),
    (["scripts/proxy_fidelity.py", "--target", "cartpole_policy", "--candidates", "1", "--out", "x"],
     "--candidates must be at least 2, got 1"),
    (["scripts/evaluate.py", "--target", "cartpole_policy", "--policy", "l1", "--flops-budget", "2", "--out", "x"],
     "--flops-budget must lie in (0, 1], got 2.0"),
])
def test_scripts_reject_bad_ranges_in_one_line(isolated_home, args, message):
    result = _run(isolated_home, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
