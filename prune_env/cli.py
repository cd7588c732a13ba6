"""Helpers shared by the command-line scripts: common flags and friendly errors."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from prune_env.config import ConfigError
from prune_env.cost import TIMING_STATISTICS
from prune_env.env import UnreachableBudgetError
from target_models import (
    TARGETS,
    CheckpointError,
    DataUnavailableError,
    UnknownTargetError,
    get_target,
)
from target_models.base import Target
from target_models.device import DEVICES, DeviceUnavailableError


class UsageError(ValueError):
    """Bad input from the command line, reported without a traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and every optional flag's default after its help
    (unless the help already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if ("default" in help_text or action.default is argparse.SUPPRESS or action.required
                or not action.option_strings):
            return help_text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{help_text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return f"{help_text} (default: not set)"
        return f"{help_text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the project's help format and one-line errors: ``error: ...`` on
    stderr and exit status 2, like every other user mistake."""

    def __init__(self, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(doc: str | None) -> ArgumentParser:
    """The parser every script starts from (``doc``: the script's docstring)."""
    return ArgumentParser(description=doc)


def target_name(name: str) -> str:
    """``--target``: a name in the registry (an argparse ``type``)."""
    if name not in TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return name


def positive_int(text: str) -> int:
    """A count of at least 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--data-dir`` and ``--limit``."""
    parser.add_argument("--target", required=True, type=target_name, metavar="TARGET",
                        help=f"the network to prune, one of: {', '.join(TARGETS)}")
    parser.add_argument("--data-dir", default=None,
                        help="local data in the hub's parquet layout (default: $PRUNE_ENV_DATA_DIR, else the hub)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="use only the first N rows of each data split, for quick trials (default: every row)")
    parser.add_argument("--checkpoint", default=None,
                        help="a pretrained checkpoint file to use instead of the project's own "
                             "(default: <target>.pt in $PRUNE_ENV_CHECKPOINTS, else the cache)")
    add_device_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: where training, fine-tuning and measuring run."""
    parser.add_argument("--device", default="auto", type=device_name, metavar="DEVICE",
                        help=f"where networks train and are measured, one of: {', '.join(DEVICES)} "
                             "(default: auto, a CUDA GPU when there is one, else Apple's MPS, else the CPU)")


def device_name(name: str) -> str:
    """``--device``: a device kind this project knows (an argparse ``type``); whether the
    machine has it is checked when the target is built."""
    if name.lower().split(":")[0] not in DEVICES:
        raise argparse.ArgumentTypeError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    return name


def add_final_finetune_arguments(parser: argparse.ArgumentParser, what: str = "the chosen network") -> None:
    """``--finetune-epochs`` and ``--rounds``: how the chosen network is reached and fine-tuned
    before the test split (override the config's ``evaluate`` section)."""
    parser.add_argument("--finetune-epochs", type=float, default=None,
                        help=f"fine-tuning of {what} before the test split (default: the target's config)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"reach {what} in this many rounds, re-ranking units and fine-tuning between rounds "
                             "out of the one --finetune-epochs budget, as ngf_scheduled does (default: the "
                             "target's config, 1: single-shot)")


def final_finetune_overrides(args: argparse.Namespace) -> dict:
    """The ``evaluate`` section's overrides from :func:`add_final_finetune_arguments`'s flags, checked."""
    check_at_least("--finetune-epochs", args.finetune_epochs, 0)
    check_at_least("--rounds", args.rounds, 1)
    return {"finetune_epochs": args.finetune_epochs, "rounds": args.rounds}


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--evaluation``, ``--val-size``, ``--bn-calibration-size``, ``--finetune-steps``, the latency
    budget's, ``--round-to`` and ``--budget-tolerance`` (override the config)."""
    from prune_env.evaluation import EVALUATIONS

    parser.add_argument("--evaluation", default=None, choices=list(EVALUATIONS),
                        help="how a candidate is prepared before it is measured (default: the target's config)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation examples per measurement: more read less noisy, at more time per "
                             "episode (default: the target's config)")
    parser.add_argument("--bn-calibration-size", type=int, default=None,
                        help="training examples that re-estimate batch-norm statistics, adaptive_bn "
                             "(default: the target's config)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="optimiser steps before each measurement, finetune evaluation "
                             "(default: the target's config)")
    parser.add_argument("--latency-budget", type=float, default=None, metavar="F",
                        help="keep this fraction of the predicted unpruned latency instead of a FLOPs budget "
                             "(a per-layer latency table, measured once on this device and cached)")
    parser.add_argument("--latency-batch-size", type=int, default=None,
                        help="batch size of the latency budget's table (default: the target's config, 1)")
    parser.add_argument("--latency-engine", default=None, choices=["torch", "onnxruntime"],
                        help="what the latency table times (default: torch, eager)")
    parser.add_argument("--latency-statistic", default=None, choices=TIMING_STATISTICS,
                        help="what each latency-table cell takes of its timed runs: the median run (default) or "
                             "the fastest")
    parser.add_argument("--latency-table-rounds", type=int, default=None, metavar="R",
                        help="time the latency table in 10 x R alternating passes (each runs every cell once), each "
                             "cell taking --latency-statistic over them (default: 1; 3 with min predicted VGG16 and "
                             "the CNN best, BENCHMARKS.md)")
    parser.add_argument("--latency-threads", type=int, default=None, metavar="T",
                        help="torch threads the latency table is timed with and the budget is meant for (default: "
                             "the process's; training still uses them all)")
    parser.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="keep a multiple of N units in every layer, or all of a layer's units "
                             "(default: the target's config, any count)")
    parser.add_argument("--budget-tolerance", type=float, default=None, metavar="T",
                        help="let a network land up to T (a fraction of the unpruned cost) under the budget, "
                             "so that layers with few FLOPs keep a choice (default: the target's config)")


def evaluation_overrides(args: argparse.Namespace) -> dict:
    """The ``env`` config entries the evaluation and rounding flags set (None where not given)."""
    check_at_least("--val-size", args.val_size, 1)
    check_at_least("--bn-calibration-size", args.bn_calibration_size, 2)
    check_at_least("--finetune-steps", args.finetune_steps, 1)
    check_at_least("--round-to", args.round_to, 1)
    check_at_least("--latency-batch-size", args.latency_batch_size, 1)
    check_at_least("--latency-table-rounds", args.latency_table_rounds, 1)
    check_at_least("--latency-threads", args.latency_threads, 1)
    check_fraction("--latency-budget", args.latency_budget)
    if args.budget_tolerance is not None and not 0.0 <= args.budget_tolerance < 1.0:
        raise UsageError(f"--budget-tolerance must lie in [0, 1), below the budget, got {args.budget_tolerance}")
    return {"evaluation": args.evaluation, "val_size": args.val_size, "bn_calibration_size": args.bn_calibration_size,
            "budget_tolerance": args.budget_tolerance, "finetune_steps": args.finetune_steps, "round_to": args.round_to, "latency_budget": args.latency_budget,
            "latency_batch_size": args.latency_batch_size, "latency_engine": args.latency_engine,
            "latency_statistic": args.latency_statistic, "latency_table_rounds": args.latency_table_rounds,
            "latency_threads": args.latency_threads}


def check_fraction(flag: str, value: float | None) -> None:
    """A fraction in (0, 1] (budgets, keep-ratios), or None when not given."""
    if value is not None and not 0.0 < value <= 1.0:
        raise UsageError(f"{flag} must lie in (0, 1], got {value}")


def parse_fractions(text: str, flag: str, upper_open: bool = False) -> list[float]:
    """Numbers separated by commas, each in (0, 1] (or (0, 1) with ``upper_open``)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(f"{flag} must be numbers separated by commas: {exc}") from exc
    if not values or any(not 0 < v <= 1 or (upper_open and v == 1) for v in values):
        raise UsageError(f"{flag} must lie in (0, {'1)' if upper_open else '1]'}, got {text}")
    return values


def parse_counts(text: str, flag: str, minimum: int = 1) -> list[int]:
    """Whole numbers separated by commas, each at least ``minimum``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(f"{flag} must be whole numbers separated by commas: {exc}") from exc
    if not values or min(values) < minimum:
        raise UsageError(f"{flag} must be at least {minimum} each, got {text}")
    return values


def check_at_least(flag: str, value: int | None, minimum: int) -> None:
    """A count of at least ``minimum``, or None when not given."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def check_budget_reachable(target: Target, budget: float | None, min_keep: float,
                           flag: str = "--flops-budget", round_to: int | None = None) -> None:
    """Refuse a FLOPs budget below what ``min_keep`` (and ``round_to``) allow, before any work starts."""
    from prune_env.env import lowest_flops_ratio

    if budget is None:
        return
    lowest = lowest_flops_ratio(target, min_keep, round_to)
    if budget < lowest * 0.999:
        rounding = f" and round_to={round_to}" if round_to else ""
        raise UsageError(f"{flag} {budget} is below the {lowest:.3f} that min_keep={min_keep}{rounding} allow "
                         f"on {target.name}; choose a budget of at least {lowest:.3f} or a smaller min_keep")


def check_latency_budget(target: Target, env_config: dict) -> None:
    """Refuse a latency budget on a network the latency table cannot cover (one pruned
    through a dependency graph, such as the ResNets), before any work starts."""
    from prune_env.pruner import Pruner

    if env_config.get("latency_budget") is None:
        return
    if not isinstance(target.pruner_for(target.build_model()), Pruner):
        raise UsageError(f"--latency-budget: the latency table covers sequential networks only, and {target.name} "
                         "is pruned through a dependency graph; give it a --flops-budget instead")


def refuse_latency_budget(config: dict, script: str) -> None:
    """Scripts that work at FLOPs budgets only refuse a latency budget from any source."""
    if config["env"].get("latency_budget") is not None:
        raise UsageError(f"{script} works at FLOPs budgets; for a latency budget run train_agent.py or evaluate.py "
                         "with --latency-budget (or drop env.latency_budget from the --config file)")


RUN_FILES = ("checkpoint", "tensorboard", "config.json", "report.json", "pruned_model.pt", "pruned.ts",
             "pruned.onnx", "export.json")


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


def check_out_folder(out: str | Path, results: tuple[str, ...] = ("report.json",), force: bool = False) -> Path:
    """``--out`` of a script that writes ``results`` there: a folder (new or existing), and
    one that already holds them only with ``--force``. Checked before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the results")
    held = [name for name in results if (out / name).exists()]
    if held and not force:
        raise UsageError(f"--out {out} already holds results ({', '.join(held)}); pass --force to overwrite "
                         "them or choose another folder")
    return out


def target_from_args(args: argparse.Namespace) -> Target:
    if args.checkpoint is not None and not Path(args.checkpoint).expanduser().is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    return get_target(args.target, data_dir=args.data_dir, limit=args.limit, checkpoint=args.checkpoint,
                      device=args.device)


USER_ERRORS = (UnknownTargetError, CheckpointError, DataUnavailableError, DeviceUnavailableError, UsageError,
               ConfigError, FileNotFoundError, UnreachableBudgetError)
"""Errors caused by the user's input: :func:`run_main` reports them in one line, exit status 2."""


def one_line(exc: BaseException) -> str:
    """An error's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(exc).split()) or exc.__class__.__name__


def run_main(main: Callable[[], object]) -> None:
    """Run a script's ``main``; known errors print one line and exit with status 2.

    SIGTERM is turned into ``KeyboardInterrupt`` so that training loops save their progress
    on either signal."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        from target_models.checkpoints import SAVED_THIS_PROCESS

        if SAVED_THIS_PROCESS:
            print(f"interrupted; progress so far is saved ({SAVED_THIS_PROCESS[-1]}); continue with --resume",
                  file=sys.stderr)
        else:
            print("interrupted before anything was saved; there is nothing to resume", file=sys.stderr)
        sys.exit(130)


