"""Helpers shared by the command-line scripts: common flags and friendly errors."""

from __future__ import annotations

import argparse
import json
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


def target_from_args(args: argparse.Namespace) -> Target:
    return get_target(args.target, data_dir=args.data_dir, limit=args.limit)


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
