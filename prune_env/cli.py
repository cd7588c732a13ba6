"""Helpers shared by the command-line scripts: common flags and friendly errors."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from target_models import (
    TARGETS,
    CheckpointError,
    DataUnavailableError,
    UnknownTargetError,
    get_target,
)
from target_models.base import Target


class UsageError(ValueError):
    """Bad input from the command line, reported without a traceback."""


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--data-dir`` and ``--limit``."""
    parser.add_argument("--target", required=True, help=f"one of: {', '.join(TARGETS)}")
    parser.add_argument("--data-dir", default=None,
                        help="local data in the hub's parquet layout (default: $PRUNE_ENV_DATA_DIR, else the hub)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N rows of each data split (quick trials)")
    parser.add_argument("--checkpoint", default=None,
                        help="a pretrained checkpoint file to use instead of the project's own "
                             "(default: <target>.pt in $PRUNE_ENV_CHECKPOINTS, else the cache)")


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--evaluation``, ``--bn-calibration-size`` and ``--finetune-steps`` (override the config)."""
    from prune_env.evaluation import EVALUATIONS

    parser.add_argument("--evaluation", default=None, choices=list(EVALUATIONS),
                        help="how a candidate is prepared before it is measured (default: the target's config)")
    parser.add_argument("--bn-calibration-size", type=int, default=None,
                        help="training examples that re-estimate batch-norm statistics (adaptive_bn)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="optimiser steps before each measurement (the finetune evaluation)")


def evaluation_overrides(args: argparse.Namespace) -> dict:
    """The ``env`` config entries the evaluation flags set (None where not given)."""
    check_at_least("--bn-calibration-size", args.bn_calibration_size, 2)
    check_at_least("--finetune-steps", args.finetune_steps, 1)
    return {"evaluation": args.evaluation, "bn_calibration_size": args.bn_calibration_size,
            "finetune_steps": args.finetune_steps}


def check_fraction(flag: str, value: float | None) -> None:
    """A fraction in (0, 1] (budgets, keep-ratios), or None when not given."""
    if value is not None and not 0.0 < value <= 1.0:
        raise UsageError(f"{flag} must lie in (0, 1], got {value}")


def check_at_least(flag: str, value: int | None, minimum: int) -> None:
    """A count of at least ``minimum``, or None when not given."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def check_budget_reachable(target: Target, budget: float | None, min_keep: float) -> None:
    """Refuse a FLOPs budget below what ``min_keep`` allows, before any work starts."""
    from prune_env.env import lowest_flops_ratio

    if budget is None:
        return
    lowest = lowest_flops_ratio(target, min_keep)
    if budget < lowest * 0.999:
        raise UsageError(f"--flops-budget {budget} is below the {lowest:.3f} that min_keep={min_keep} allows "
                         f"on {target.name}; choose a budget of at least {lowest:.3f} or a smaller min_keep")


RUN_FILES = ("checkpoint", "tensorboard", "config.json", "report.json", "pruned_model.pt")


def prepare_run_folder(out: Path, resume: bool, force: bool = False) -> None:
    """``out`` must be a folder: new, or an existing run only with ``--resume`` (kept) or
    ``--force`` (its files removed, so nothing of the old run is mistaken for the new)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    existing = out.is_dir() and (out / "config.json").exists()
    if resume and not existing:
        raise UsageError(f"--resume: {out} holds no run to continue (no config.json)")
    if existing and not resume and not force:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or --force to overwrite it")
    if force and not resume:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def target_from_args(args: argparse.Namespace) -> Target:
    if args.checkpoint is not None and not Path(args.checkpoint).expanduser().is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    return get_target(args.target, data_dir=args.data_dir, limit=args.limit, checkpoint=args.checkpoint)


def run_main(main: Callable[[], object]) -> None:
    """Run a script's ``main``; known errors print one line and exit with status 2.

    SIGTERM is turned into ``KeyboardInterrupt`` so that training loops save their progress
    on either signal."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except (UnknownTargetError, CheckpointError, DataUnavailableError, UsageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; progress so far is saved", file=sys.stderr)
        sys.exit(130)


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
