""":func:`train`, exported as ``segfuse.train``: one training run from Python, as ``segfuse train`` does it."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Union

from .config import TrainConfig


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the run folder (open it with ``segfuse.runs.Run``) and its last metrics
    row (``iteration``, ``train_loss``, ``val_dice_mean`` when validated, ...)."""
    run_dir: str
    metrics: Dict[str, Any]


def train(config: Union[TrainConfig, Mapping[str, Any], None] = None, /, **options) -> TrainResult:
    """Train a model and write its run folder (``config.json``, ``metrics.csv``, ``last.pt``, ``best.pt``, plots).

    Args:
        config: a :class:`TrainConfig` or a mapping of its fields (optional).
        **options: :class:`TrainConfig` fields, overriding ``config`` (``segfuse train --help`` lists them:
            ``--iters-per-epoch`` is ``iters_per_epoch``; ``--model-arg K=V`` is ``model_kwargs={"K": V}``).

    Example:
        >>> result = segfuse.train(model="unet", data="synthetic", iterations=20, run_dir="runs/quick")
        >>> result.metrics["val_dice_mean"]
    """
    from .trainer import Trainer
    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config, **options)
    else:
        cfg = TrainConfig(**{**dict(config or {}), **options})
    final = Trainer(cfg).fit()
    return TrainResult(os.path.abspath(cfg.run_dir), final)
