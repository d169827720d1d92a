"""``segfuse`` command line: thin entry points over the Python API.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "bench": ("segfuse.bench.cli", "kernel benchmark: memory traffic, launches and (on CUDA) timings"),
    "train": ("segfuse.train.cli", "train a segmentation model"),
    "predict": ("segfuse.predict_cli", "predict label maps for NIfTI images"),
    "evaluate": ("segfuse.evaluate_cli", "per-class Dice and HD95 of predictions against labels"),
    "check-gpu": ("segfuse.check_gpu", "on a CUDA machine: the GPU test tier and the timed bench, in one report"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="segfuse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)  # -h/--help goes to the full parser below
        p.set_defaults(_module=module)
    args, _ = parser.parse_known_args(argv)
    mod = importlib.import_module(args._module)
    full = argparse.ArgumentParser(prog=f"segfuse {args.command}", description=COMMANDS[args.command][1])
    mod.add_arguments(full)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv.remove(args.command)
    return int(mod.run(full.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
