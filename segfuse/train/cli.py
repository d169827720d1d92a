"""``segfuse train``: train a segmentation model (single process, or ``torchrun`` for DDP).

Examples::

    segfuse train --model lgmsnet --data synthetic --dims 2 --max-minutes 3 --run-dir runs/quick
    segfuse train --model unet --data /data/Dataset002_Synapse --dims 3 --supervision deep
    torchrun --nproc_per_node 4 -m segfuse train --model lgmsnet --data mni152 --run-dir runs/ddp
"""
from __future__ import annotations

import argparse
import ast
import os

from .factory import SUPERVISIONS, available_models


def _model_kw(items):
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
    p.add_argument("--model", default="unet",
                   help=f"network: {', '.join(available_models())} (default unet)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="extra model option (repeatable)")
    p.add_argument("--data", default="synthetic",
                   help="nnU-Net raw dataset folder, or an embedded default: synthetic | mni152")
    p.add_argument("--cache-dir", default=None, help="where embedded datasets are written "
                   "(default $SEGFUSE_DATA or ~/.cache/segfuse)")
    p.add_argument("--run-dir", default="runs/default", help="output folder (checkpoints, CSV, plots)")
    p.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2: slices of the volumes; 3: patches")
    p.add_argument("--supervision", default="single", choices=SUPERVISIONS,
                   help="single: Dice+CE on the output; deep: nnU-Net weights over the deep-supervision maps; "
                        "lomix: LoMix mutant maps with learned weights; fias: FIAS main + averaged auxiliary "
                        "subsets (models that bring a criterion, e.g. maskmed, use it)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--iters-per-epoch", type=int, default=50)
    p.add_argument("--iterations", type=int, default=None, help="total iteration budget (overrides --epochs)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock training budget; the LR schedule ends when it is spent")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help="patch size (2 or 3 ints; default: whole slice / volume rounded up, capped)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (AdamW) / 1e-2 (SGD)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--transformer-lr-scale", type=float, default=None,
                   help="models with CNN and transformer parts (maskmed): the transformer's learning rate is "
                        "--lr times this (default: the model's, 0.1 for maskmed)")
    p.add_argument("--schedule", default="poly", choices=("poly", "cosine", "constant"))
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="mixed precision (auto: bf16/fp16 on CUDA, off on CPU)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and at the end)")
    p.add_argument("--val-split", default="auto", choices=("auto", "cases", "slices", "none"),
                   help="auto: cases if >= --holdout-every cases, else slices (2D)")
    p.add_argument("--holdout-every", type=int, default=5,
                   help="hold out every N-th case (or every N-th foreground slice) for validation")
    p.add_argument("--augment", default="default", choices=("none", "flips", "default"))
    p.add_argument("--fg-prob", type=float, default=0.33, help="probability of a foreground-centred patch")
    p.add_argument("--spacing", type=float, nargs=3, default=None, help="resample to this spacing (mm)")
    p.add_argument("--ct-window", type=float, nargs=2, default=(-175.0, 250.0), help="HU window for CT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="exit after N epochs of this process (checkpointed; continue with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args):
    from .trainer import TrainConfig
    return TrainConfig(
        model=args.model, data=args.data, run_dir=args.run_dir, dims=args.dims, supervision=args.supervision,
        epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, iterations=args.iterations,
        max_minutes=args.max_minutes, batch_size=args.batch_size, patch_size=args.patch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        amp=args.amp, val_every=args.val_every, val_split=args.val_split, holdout_every=args.holdout_every,
        augment=args.augment, fg_prob=args.fg_prob, spacing=args.spacing, ct_window=tuple(args.ct_window),
        seed=args.seed, device=args.device, num_workers=args.num_workers, cache_dir=args.cache_dir,
        model_kwargs=_model_kw(args.model_arg), transformer_lr_scale=args.transformer_lr_scale, resume=args.resume, progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs)


def run(args) -> int:
    import torch

    from . import distributed as D
    from .trainer import Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    try:
        final = Trainer(cfg).fit()
    finally:
        D.cleanup()
    if int(os.environ.get("RANK", "0")) == 0:
        dice = final.get("val_dice_mean")
        print(f"done: {cfg.run_dir}" + (f" (final validation Dice {dice:.4f})" if dice is not None else ""))
    return 0
