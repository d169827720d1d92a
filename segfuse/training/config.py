"""``TrainConfig``: every option of a training run, the single source of its defaults.

``segfuse train``'s options are generated from these fields (``--kebab-case`` name, type, default and
``help``/``choices`` metadata; see :mod:`segfuse.train_cli`) and :func:`segfuse.train` takes them as
keyword arguments, so a new option is one field here. Metadata keys: ``help``; ``choices``; ``metavar``;
``default_text`` (how ``--help`` states a ``None`` default that means "computed"); ``cli: False`` for a
field the command line fills another way (``model_kwargs`` <- ``--model-arg KEY=VALUE``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from segfuse.data.preprocess import DEFAULT_CT_WINDOW
from segfuse.data.split import VAL_SPLITS
from segfuse.runs import SUPERVISIONS
from .factory import DICE_CE_CHOICES


def option(default: Any, help: str, **metadata) -> Any:
    """A dataclass field with ``default`` and its command-line ``help`` (plus ``choices``, ...)."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass
class TrainConfig:
    """All options of a training run (``segfuse train --help`` lists them with these defaults). A value
    outside a field's ``choices`` is a ValueError on construction."""
    model: str = option("unet", "network: a segfuse.models.list_models() name")
    data: str = option("synthetic", "nnU-Net raw dataset folder, or an embedded default: synthetic | mni152")
    run_dir: str = option("runs/default", "output folder (checkpoints, CSV, plots)")
    dims: int = option(2, "2: slices of the volumes; 3: patches", choices=(2, 3))
    supervision: str = option(
        "single", "single: Dice+CE on the output; deep: nnU-Net weights over the deep-supervision maps; "
        "lomix: LoMix mutant maps with learned weights; fias: FIAS main + averaged auxiliary subsets "
        "(models that bring a criterion, e.g. maskmed, use it)", choices=SUPERVISIONS)
    dice_ce: str = option(
        "auto", "Dice + CE formulation of single / deep / lomix: monai (CE + Dice, plain denominators, per "
        "sample), lomix (0.3 CE + 0.7 Dice, squared denominators, batch sums) or auto (lomix for --supervision "
        "lomix, monai otherwise); one value for every arm makes a fair comparison", choices=DICE_CE_CHOICES)
    epochs: int = option(50, "epochs of --iters-per-epoch iterations")
    iters_per_epoch: int = option(50, "iterations per epoch (one metrics row and checkpoint each)")
    iterations: Optional[int] = option(None, "total iteration budget (overrides --epochs)")
    max_minutes: Optional[float] = option(None, "wall-clock training budget; the LR schedule ends when it is spent")
    batch_size: int = option(8, "per process")
    patch_size: Optional[Tuple[int, ...]] = option(
        None, "patch size (2 or 3 ints)", metavar="N",
        default_text="whole slice / volume rounded up to the model's size multiple, capped at 256 (2D) / 96 (3D)")
    optimizer: str = option("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: Optional[float] = option(None, "learning rate", default_text="2e-3 (AdamW) / 1e-2 (SGD)")
    weight_decay: float = option(1e-4, "weight decay")
    schedule: str = option("poly", "learning-rate schedule", choices=("poly", "cosine", "constant"))
    amp: str = option("auto", "mixed precision (auto: bf16/fp16 on CUDA, off on CPU)",
                      choices=("auto", "off", "bf16", "fp16"))
    val_every: int = option(1, "validate every N epochs (and at the end)")
    val_split: str = option("auto", "auto: cases if >= --holdout-every cases, else slices (2D)", choices=VAL_SPLITS)
    holdout_every: int = option(5, "hold out every N-th case (or every N-th foreground slice) for validation")
    augment: str = option("default", "augmentation preset", choices=("none", "flips", "default"))
    fg_prob: float = option(0.33, "probability of a foreground-centred patch")
    spacing: Optional[Tuple[Optional[float], Optional[float], Optional[float]]] = option(
        None, "resample to this spacing (mm; None on an axis keeps it)", default_text="the data's own",
        metavar=("SX", "SY", "SZ"))
    ct_window: Tuple[float, float] = option(DEFAULT_CT_WINDOW, "HU window for CT channels", metavar=("LOW", "HIGH"))
    seed: int = option(0, "model init, sampling and augmentation")
    device: str = option("auto", "auto | cpu | cuda")
    num_workers: int = option(0, "DataLoader workers")
    cache_dir: Optional[str] = option(None, "where embedded datasets are written",
                                      default_text="$SEGFUSE_DATA or ~/.cache/segfuse")
    model_kwargs: Dict[str, Any] = option({}, "model options (the command line: --model-arg KEY=VALUE)", cli=False)
    transformer_lr_scale: Optional[float] = option(
        None, "models with CNN and transformer parts (maskmed): the transformer's learning rate is --lr times this",
        default_text="the model's, 0.1 for maskmed")
    resume: bool = option(False, "continue from RUN_DIR/last.pt")
    progress: bool = option(True, "progress bar on a terminal (a log file gets one line per epoch either way)")
    stop_after_epochs: Optional[int] = option(
        None, "exit after N epochs of this process (checkpointed; continue with --resume)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} (--{f.name.replace('_', '-')}) must be one of "
                                 f"{', '.join(map(str, choices))}, got {value!r}")
