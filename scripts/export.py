"""Export the pruned network of a run as TorchScript and/or ONNX, checked and timed.

    python scripts/export.py --run runs/NAME [--format torchscript|onnx|all] [--checkpoint FILE]

Reads RUN/pruned_model.pt and RUN/config.json, writes RUN/pruned.ts and/or RUN/pruned.onnx
and RUN/export.json: the max absolute difference between exported and in-memory outputs
(onnxruntime runs the ONNX file) and the latency of original and pruned at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prune_env.cli import UsageError, add_device_argument, make_parser, run_main
from prune_env.export import FORMATS, export_all, load_pruned
from prune_env.files import write_json
from target_models import get_target


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--run", required=True, help="a run folder written by train_agent.py")
    parser.add_argument("--format", default="all", choices=[*FORMATS, "all"], help="which files to write")
    parser.add_argument("--data-dir", default=None,
                        help="local data in the hub's parquet layout (default: $PRUNE_ENV_DATA_DIR, else the hub)")
    parser.add_argument("--checkpoint", default=None,
                        help="the pretrained network the run pruned, timed beside it (default: the checkpoint "
                             "file the run recorded in config.json)")
    add_device_argument(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    run = Path(args.run)
    config_path = run / "config.json"
    for path in (config_path, run / "pruned_model.pt"):
        if not path.is_file():
            raise UsageError(f"{path} not found; is {run} a run folder of scripts/train_agent.py?")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{config_path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "target" not in config:
        raise UsageError(f"{config_path} names no target; is {run} a run folder of scripts/train_agent.py?")
    checkpoint = args.checkpoint or config.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        flag = "--checkpoint" if args.checkpoint else f"the checkpoint the run recorded in {config_path}"
        raise UsageError(f"{flag} ({checkpoint}) is not a file; pass --checkpoint with the pretrained "
                         f"{config['target']} network the run pruned")
    target = get_target(config["target"], data_dir=args.data_dir, checkpoint=checkpoint, device=args.device)
    model = load_pruned(run / "pruned_model.pt", target)
    formats = FORMATS if args.format == "all" else (args.format,)
    result = export_all(model, target.load_pretrained(check_data=False), target, run, formats)  # needs no data
    write_json(run / "export.json", result)
    for fmt, diff in result["max_abs_diff"].items():
        print(f"{fmt:12s} {result['files'][fmt]}  max |exported - in-memory| = {diff:.3g}")
    for batch, ms in result["latency_ms"].items():
        print(f"latency {batch:9s} base {ms['base']:.3f} ms  pruned {ms['pruned']:.3f} ms  "
              f"speed-up {ms['base'] / ms['pruned']:.2f}x ({result['threads']} threads)")


if __name__ == "__main__":
    run_main(main)
