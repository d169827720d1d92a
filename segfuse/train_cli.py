"""``segfuse train``: train a segmentation model (single process, or ``torchrun`` for DDP); a thin command
line over :func:`segfuse.train`.

Its options are generated from the fields of :class:`segfuse.training.TrainConfig` (``iters_per_epoch``
-> ``--iters-per-epoch``; type, default, help and choices from the field; tuples take several values;
booleans are ``--flag/--no-flag``); ``--model-arg`` and ``--threads`` are the only hand-written ones.

Examples::

    segfuse train --model lgmsnet --data synthetic --dims 2 --max-minutes 3 --run-dir runs/quick
    segfuse train --model unet --data /data/Dataset002_Synapse --dims 3 --supervision deep
    torchrun --nproc_per_node 4 -m segfuse train --model lgmsnet --data mni152 --run-dir runs/ddp
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import typing
from typing import Any, Dict, Tuple

from segfuse.training.config import TrainConfig


def option_name(field_name: str) -> str:
    """``iters_per_epoch`` -> ``--iters-per-epoch``."""
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _argparse_type(hint) -> Tuple[Any, Any]:
    """(type, nargs) of a field annotation: ``Optional[X]`` -> X; ``Tuple[X, ...]`` -> (X, "+");
    ``Tuple[X, X]`` -> (X, 2)."""
    hint = _unwrap_optional(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return _unwrap_optional(args[0]), "+"
        return _unwrap_optional(args[0]), len(args)
    return hint, None


def default_text(field: dataclasses.Field) -> str:
    """How ``--help`` states the field's default (as typed on the command line, or its ``default_text``)."""
    if "default_text" in field.metadata:
        return field.metadata["default_text"]
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return option_name(field.name) if value else "--no-" + option_name(field.name)[2:]
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def cli_fields():
    """The :class:`TrainConfig` fields that are command-line options (all but ``cli: False`` ones)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, with the field's type, default, help and choices."""
    hints = typing.get_type_hints(TrainConfig)
    for f in cli_fields():
        kind, nargs = _argparse_type(hints[f.name])
        help_text = f"{f.metadata['help']} (default: {default_text(f)})".replace("%", "%%")
        if kind is bool:
            action = p.add_argument(option_name(f.name), action=argparse.BooleanOptionalAction, default=f.default)
            action.help = help_text           # set after: some Python versions append the default themselves
            continue
        kw: Dict[str, Any] = dict(type=kind, default=f.default, help=help_text)
        if nargs is not None:
            kw.update(nargs=nargs, metavar=f.metadata.get("metavar", f.name.upper().split("_")[-1]))
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(option_name(f.name), **kw)


def _model_kw(items) -> Dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from segfuse.models import list_models
    add_config_arguments(p)
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra model option, a Python literal (repeatable; e.g. \"channels=(16,32,64,128)\")")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    examples = __doc__.split("Examples::")[1].strip("\n").rstrip()
    p.epilog = f"models: {', '.join(list_models())}\n\nexamples:\n{examples}"


def config_from_args(args) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options (lists of tuple fields become tuples)."""
    values = {}
    for f in cli_fields():
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return TrainConfig(**values, model_kwargs=_model_kw(args.model_arg))


def run(args) -> int:
    import torch

    from segfuse.training import distributed as D
    from segfuse.training.api import train
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    try:
        final = train(cfg).metrics
    finally:
        D.cleanup()
    if int(os.environ.get("RANK", "0")) == 0:
        dice = final.get("val_dice_mean")
        print(f"done: {cfg.run_dir}" + (f" (final validation Dice {dice:.4f})" if dice is not None else ""))
    return 0
