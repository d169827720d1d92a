"""``segfuse study``: the supervision study (single output vs deep supervision vs LoMix), a thin command line
over :func:`segfuse.study.supervision_study`.

Study options below; every other option is a ``segfuse train`` option shared by all runs (model, data,
spacing, batch size, augmentation, ...; ``segfuse train --help``).

Examples::

    segfuse study --iterations 80 --minutes 1 --model lgmsnet --data mni152 --spacing 2 2 2 --batch-size 4 --augment flips --out results/study_mni152
    segfuse study --iterations 150 --minutes 2 --model lgmsnet --data synthetic --batch-size 8 --out results/study_synthetic
"""
from __future__ import annotations

import argparse
import dataclasses

from segfuse.study import ARMS

PASSES_OPTIONS_ON = True  # segfuse.cli hands the options this parser does not know to run() (train options)
# the train options a study sets itself, per run
_PER_RUN = {"supervision", "seed", "run_dir", "resume", "iterations", "max_minutes", "progress", "device", "dice_ce"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("any other option is a `segfuse train` option shared by every run\n\nexamples:\n"
                + __doc__.split("Examples::")[1].strip("\n").rstrip())
    p.add_argument("--out", default="results/supervision", help="folder for the runs, runs.csv and summary.md "
                   "(default results/supervision)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="supervisions (default: all three)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--iterations", type=int, default=80, help="equal-iterations budget (default 80; 0: skip)")
    p.add_argument("--minutes", type=float, default=None, help="equal-wall-time budget per run (default: skip)")
    p.add_argument("--dice-ce", default="monai", choices=("monai", "lomix"),
                   help="the Dice + CE formulation of every arm (default monai: CE + Dice, plain, per sample)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args, train_argv) -> int:
    import torch

    from segfuse.study import supervision_study
    from segfuse.train_cli import add_arguments as add_train_arguments, config_from_args
    if args.threads:
        torch.set_num_threads(args.threads)
    own = [o for o in train_argv for k in _PER_RUN if o.split("=")[0] in ("--" + k.replace("_", "-"), "--no-" + k)]
    if own:
        raise ValueError(f"segfuse study sets {', '.join(own)} itself, per run (see segfuse study --help)")
    train_parser = argparse.ArgumentParser(prog="segfuse study (train options)")
    add_train_arguments(train_parser)
    cfg = config_from_args(train_parser.parse_args(train_argv))
    shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _PER_RUN}
    result = supervision_study(args.out, arms=args.arms, seeds=args.seeds, iterations=args.iterations or None,
                               minutes=args.minutes, dice_ce=args.dice_ce, device=args.device, **shared)
    print(result.summary)
    return 0
