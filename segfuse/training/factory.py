"""What training binds to a model: the input size multiple, the loss of a supervision mode
(``segfuse.losses``: fused kernels on CUDA, eager references on CPU), optimiser parameter groups and
the learned loss weights to log. Models themselves come from ``segfuse.models.create_model``.
"""
from __future__ import annotations

import inspect

from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from segfuse.runs import SUPERVISIONS


def size_multiple(model: nn.Module) -> int:
    """Input sizes the model accepts are multiples of ``model.size_multiple`` (every segfuse model has it)."""
    value = getattr(model, "size_multiple", None)
    if not value:
        raise TypeError(f"{type(model).__name__} has no size_multiple attribute: every model trained by segfuse "
                        "states the multiple its input sizes must have (see segfuse.models)")
    return int(value)


def deep_supervision_weights(num_maps: int) -> List[float]:
    """nnU-Net's fixed weights, coarse -> fine: finest 1, each coarser level half (normalised later)."""
    return [0.5 ** (num_maps - 1 - i) for i in range(num_maps)]


# Dice + CE formulations ``--dice-ce`` can give every supervision (single, deep, lomix) alike, so that a
# comparison of supervisions compares the supervision and not the loss: MONAI's ``DiceCELoss`` defaults (CE +
# Dice, plain denominators, per sample) and LoMix's released one (0.3 CE + 0.7 Dice, squared denominators,
# sums over the batch). "auto": each supervision's own (single / deep: monai; lomix: lomix).
DICE_CE = {"monai": dict(ce_weight=1.0, dice_weight=1.0, squared=False, batch=False),
           "lomix": dict(ce_weight=0.3, dice_weight=0.7, squared=True, batch=True)}
DICE_CE_CHOICES = ("auto",) + tuple(DICE_CE)


def build_loss(supervision: str, num_maps: int, num_classes: int, spatial_dims: int,
               model: Optional[nn.Module] = None, dice_ce: str = "auto",
               ignore_index: Optional[int] = None) -> Tuple[Callable, nn.Module]:
    """Returns ``(loss_fn(outputs, target [N, *S] int64) -> scalar, module)``.

    ``dice_ce``: the Dice + CE formulation of single / deep / lomix (:data:`DICE_CE`; "auto": each one's own).
    ``ignore_index``: the dataset's ignore label (nnU-Net's ``"ignore"``, ``num_classes`` itself), or None:
    voxels labelled with it add to neither the CE (a mean over the other voxels) nor the Dice sums. A model's
    own criterion cannot leave voxels out: that is a ValueError naming the model and the label.

    ``module`` holds the loss's learnable parameters (LoMix weights) and buffers; it is trained and
    checkpointed with the model. ``outputs`` is one logits tensor (``single``) or the model's list of
    logits coarse -> fine (``deep``/``lomix``/``fias``). A model that brings its own criterion
    (``model.criterion()``, e.g. MaskMed's set criterion over its per-stage class and mask predictions)
    is trained with it; ``supervision`` must then be left at "single".
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"--supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    if model is not None and callable(getattr(model, "criterion", None)):
        if supervision != "single":
            raise ValueError(f"--supervision {supervision}: this model brings its own criterion "
                             f"({type(model).__name__}.criterion()); leave --supervision at its default")
        takes_ignore = "ignore_index" in inspect.signature(model.criterion).parameters
        if ignore_index is not None and not takes_ignore:
            raise ValueError(f"model {type(model).__name__} trains with its own criterion "
                             f"({type(model).__name__}.criterion()), which cannot leave out the voxels of the "
                             f"dataset's ignore label ({ignore_index}, dataset.json 'ignore'); it would learn them "
                             "as a class. Train another model on this dataset, or remove the ignore label")
        mod = model.criterion(ignore_index=ignore_index) if ignore_index is not None else model.criterion()
        return mod, mod
    from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, FIASLoss, LoMixLoss
    if dice_ce not in DICE_CE_CHOICES:
        raise ValueError(f"--dice-ce must be one of {DICE_CE_CHOICES}, got {dice_ce!r}")
    form = DICE_CE[dice_ce if dice_ce != "auto" else ("lomix" if supervision == "lomix" else "monai")]
    if supervision == "fias" and dice_ce != "auto":
        raise ValueError("--dice-ce: FIAS supervision has its own formulation (0.6 CE + 0.4 Dice); leave it at auto")
    if supervision == "single":
        mod = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=form["ce_weight"], lambda_dice=form["dice_weight"],
                         squared_pred=form["squared"], batch=form["batch"], ignore_index=ignore_index)

        def single(out, target):
            return mod(out[-1] if isinstance(out, (list, tuple)) else out, target)
        return single, mod
    if supervision == "deep":
        w = deep_supervision_weights(num_maps)
        mod = DeepSupervisionDiceCE(num_maps, weights=[x / sum(w) for x in w], lambda_ce=form["ce_weight"],
                                    lambda_dice=form["dice_weight"], squared=form["squared"], batch=form["batch"],
                                    ignore_index=ignore_index)
        return mod, mod
    if supervision == "fias":
        if num_maps < 2:
            raise ValueError("--supervision fias needs a model with deep-supervision outputs (auxiliary maps + "
                             f"the main output), this one gives {num_maps} map")
        mod = FIASLoss(num_maps, ignore_index=ignore_index)
        return mod, mod
    mod = LoMixLoss(num_maps, num_classes, spatial_dims, **form, ignore_index=ignore_index)
    return mod, mod


def optimizer_groups(model: nn.Module, loss_module: nn.Module, transformer_lr_scale: Optional[float]) -> List[dict]:
    """Parameter groups ``{"params", "name", "lr_scale"}``: a model with ``param_groups()`` (MaskMed: "cnn" and
    "transformer") gets its transformer parts trained at ``lr * transformer_lr_scale`` (default the model's
    ``default_transformer_lr_scale``); everything else (and the loss's parameters) at ``lr``."""
    loss_params = [p for p in loss_module.parameters() if p.requires_grad]
    if not callable(getattr(model, "param_groups", None)):
        return [{"params": [p for p in model.parameters() if p.requires_grad] + loss_params, "name": "all",
                 "lr_scale": 1.0}]
    parts = model.param_groups()
    scale = transformer_lr_scale if transformer_lr_scale is not None else getattr(
        model, "default_transformer_lr_scale", 1.0)
    if not scale > 0:
        raise ValueError(f"--transformer-lr-scale must be > 0, got {scale!r}")
    groups = [{"params": [p for p in parts["cnn"] if p.requires_grad] + loss_params, "name": "cnn", "lr_scale": 1.0},
              {"params": [p for p in parts["transformer"] if p.requires_grad], "name": "transformer",
               "lr_scale": float(scale)}]
    n_grouped = sum(len(g["params"]) for g in groups) - len(loss_params)
    n_model = sum(1 for p in model.parameters() if p.requires_grad)
    if n_grouped != n_model:
        raise RuntimeError(f"{type(model).__name__}.param_groups() covers {n_grouped} of {n_model} parameters")
    return groups


def loss_weights(module: nn.Module):
    """Current learned weights of a LoMix loss as ``{name: float}`` (empty for fixed losses)."""
    if callable(getattr(module, "interpret", None)):
        return {str(k): float(v) for k, v in module.interpret().items()}
    fn = getattr(module, "weights", None)
    if not callable(fn):
        return {}
    with torch.no_grad():
        w = fn().detach().float().flatten().tolist()
    names = getattr(module, "names", None) or [f"w{i}" for i in range(len(w))]
    return dict(zip(names, w))
