"""Pretrain a target network (resumable, with a time budget).

    python scripts/pretrain.py --target cnn_cifar10 [--epochs N] [--max-minutes M] [--resume | --force] [--limit-train N]
"""

from __future__ import annotations

import argparse
import json

from prune_env.cli import (
    UsageError,
    add_target_arguments,
    make_parser,
    positive_int,
    run_main,
    target_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--epochs", type=float, default=None,
                        help="epochs, PPO chunks of 10k steps for cartpole (default: the target's own)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (and save) after this many minutes (default: no limit)")
    parser.add_argument("--resume", action="store_true", help="continue from the saved checkpoint")
    parser.add_argument("--force", action="store_true",
                        help="train from scratch over an existing checkpoint (default: refuse to overwrite it)")
    parser.add_argument("--limit-train", type=positive_int, default=None,
                        help="alias of --limit: first N rows per split (default: every row)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def refuse_overwrite(target, resume: bool, force: bool) -> None:
    """A checkpoint already made (or half made) is only continued or, with --force, replaced."""
    path = target.pretrain_path
    if resume and force:
        raise UsageError("--resume continues the checkpoint and --force replaces it; pass one of them")
    if path.exists() and not resume and not force:
        meta = target.load_checkpoint(path)["meta"]
        state = "finished" if meta.get("complete", True) else f"unfinished, {meta.get('epochs_done', 0):.2f} epochs"
        raise UsageError(f"{path} already holds a {target.name} checkpoint ({state}); pass --resume to continue "
                         "it, or --force to train a new one over it")


def main() -> None:
    args = build_parser().parse_args()
    for flag, value in (("--epochs", args.epochs), ("--max-minutes", args.max_minutes)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be above 0, got {value}")
    args.limit = args.limit if args.limit is not None else args.limit_train
    target = target_from_args(args)
    refuse_overwrite(target, args.resume, args.force)
    meta = target.pretrain(epochs=args.epochs, max_minutes=args.max_minutes, resume=args.resume,
                           show_progress=not args.quiet)
    print(json.dumps({"checkpoint": str(target.checkpoint_path), **meta}, indent=2))


if __name__ == "__main__":
    run_main(main)
