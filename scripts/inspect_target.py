"""Show a target's prunable layers, FLOPs and parameters, optionally pruned uniformly.

    python scripts/inspect_target.py --target vgg16_cifar10 --keep 0.5 --criterion l1 --json
"""

from __future__ import annotations

import argparse
import json

from prune_env.cli import UsageError, add_target_arguments, make_parser, run_main, target_from_args
from prune_env.cost import count_flops, count_params
from prune_env.importance import CRITERIA
from prune_env.pruner import BasePruner, make_pruner


def describe(model, pruner: BasePruner) -> dict:
    widths = pruner.widths_of(model)
    return {
        "layers": [{"name": layer.name, "kind": layer.kind, "units": w}
                   for layer, w in zip(pruner.layers, widths, strict=True)],
        "flops": count_flops(model, pruner.example),
        "params": count_params(model),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    add_target_arguments(parser)
    parser.add_argument("--keep", type=float, default=None,
                        help="also prune with this uniform keep-ratio in (0, 1] (default: do not prune)")
    parser.add_argument("--criterion", default="l1", choices=list(CRITERIA), help="which units of a layer go")
    parser.add_argument("--untrained", action="store_true", help="inspect a freshly initialised network")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.keep is not None and not 0 < args.keep <= 1:
        raise UsageError(f"--keep must be in (0, 1], got {args.keep}")
    target = target_from_args(args)
    model = target.build_model() if args.untrained else target.load_pretrained()
    needs_data = args.keep is not None and args.criterion == "activation"
    pruner = make_pruner(model, target.example_input(), target.calibration_inputs(256) if needs_data else None,
                         keep_layers=target.keep_layers)
    report = {"target": target.name, **describe(model, pruner)}
    if args.keep is not None:
        report["pruned"] = describe(pruner.prune(args.keep, args.criterion), pruner)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{target.name}: {report['flops']:,} FLOPs, {report['params']:,} params")
    for i, layer in enumerate(report["layers"]):
        after = f" -> {report['pruned']['layers'][i]['units']}" if "pruned" in report else ""
        print(f"  layer {i:2d} ({layer['kind']:6s} {layer['name']}): {layer['units']} units{after}")
    if "pruned" in report:
        p = report["pruned"]
        print(f"pruned: {p['flops']:,} FLOPs ({p['flops'] / report['flops']:.1%}), "
              f"{p['params']:,} params ({p['params'] / report['params']:.1%})")


if __name__ == "__main__":
    run_main(main)
