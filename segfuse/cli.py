"""``segfuse`` command line: thin entry points over the Python API.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "bench": ("segfuse.bench.cli", "kernel benchmark: memory traffic, launches and (on CUDA) timings"),
    "train": ("segfuse.train_cli", "train a segmentation model"),
    "predict": ("segfuse.predict_cli", "predict label maps for NIfTI images"),
    "evaluate": ("segfuse.evaluate_cli", "per-class Dice and HD95 of predictions against labels"),
    "study": ("segfuse.study_cli", "supervision study: single output vs deep supervision vs LoMix, fair budgets"),
    "check-gpu": ("segfuse.check_gpu", "on a CUDA machine: the GPU test tier and the timed bench, in one report"),
}


def main(argv=None, catch_user_errors=None) -> int:
    """Run one sub-command. Errors the user caused (:class:`segfuse.data.UserError`: bad data, a missing
    dataset, an occupied or locked run folder, a damaged checkpoint) are printed as one line on stderr
    with exit status 2 when ``catch_user_errors`` (default: only when ``argv`` is None, i.e. a real
    command line; in-process callers get the exception)."""
    if catch_user_errors is None:
        catch_user_errors = argv is None
    if not catch_user_errors:
        return _main(argv)
    import warnings

    from segfuse.data.errors import UserError
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        ours = os.path.abspath(str(filename)).startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep)
        if ours and issubclass(category, UserWarning):      # our own warnings: one line, no source
            print(f"segfuse: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = one_line
    try:
        return _main(argv)
    except UserError as e:
        msg = " ".join(str(e).split("\n")) or type(e).__name__
        print(f"segfuse: error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="segfuse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)  # -h/--help goes to the full parser below
        p.set_defaults(_module=module)
    args, _ = parser.parse_known_args(argv)
    mod = importlib.import_module(args._module)
    passes_on = getattr(mod, "PASSES_OPTIONS_ON", False)  # e.g. study: options it does not know go to `segfuse train`
    # no prefix matching where options are passed on: `--seed` must not be read as the study's `--seeds`
    full = argparse.ArgumentParser(prog=f"segfuse {args.command}", description=COMMANDS[args.command][1],
                                   allow_abbrev=not passes_on)
    mod.add_arguments(full)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv.remove(args.command)
    if passes_on:
        known, rest = full.parse_known_args(argv)
        return int(mod.run(known, rest) or 0)
    return int(mod.run(full.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
