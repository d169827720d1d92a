"""The one place that binds ``segfuse train`` to models and losses.

``build_model`` uses ``segfuse.models.create_model`` for registered names and the local plain
``unet`` (:mod:`segfuse.train.unet`, the baseline) for ``"unet"``. ``build_loss`` uses
``segfuse.losses`` (fused kernels on CUDA, eager references on CPU).
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .unet import UNet

log = logging.getLogger(__name__)
SUPERVISIONS = ("single", "deep", "lomix", "fias")
DEEP_SUPERVISIONS = ("deep", "lomix", "fias")  # the ones that need every deep-supervision map


def available_models() -> List[str]:
    names = ["unet"]
    try:
        from segfuse.models import list_models
        names += list_models()
    except ImportError:
        pass
    return sorted(set(names))


def build_model(name: str, spatial_dims: int, in_channels: int, num_classes: int,
                deep_supervision: bool = False, **kw) -> nn.Module:
    """Model whose forward maps ``[N, in_channels, *S]`` to logits ``[N, num_classes, *S]`` (or, in
    training mode with ``deep_supervision``, a list of logits coarse -> fine)."""
    if name == "unet":
        return UNet(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
    try:
        from segfuse.models import create_model
    except ImportError as e:
        raise ValueError(f"--model {name!r}: segfuse.models is not available ({e}); use 'unet'") from e
    return create_model(name, spatial_dims, in_channels, num_classes,
                        deep_supervision=deep_supervision, **kw)


def size_divisor(model: nn.Module, spatial_dims: int) -> int:
    """Input sizes the model accepts are multiples of this (``model.divisor`` or 32)."""
    for attr in ("divisor", "size_divisor", "size_multiple"):
        if getattr(model, attr, None):
            return int(getattr(model, attr))
    return 32


def deep_supervision_weights(num_maps: int) -> List[float]:
    """nnU-Net's fixed weights, coarse -> fine: finest 1, each coarser level half (normalised later)."""
    return [0.5 ** (num_maps - 1 - i) for i in range(num_maps)]


def build_loss(supervision: str, num_maps: int, num_classes: int, spatial_dims: int,
               model: Optional[nn.Module] = None) -> Tuple[Callable, nn.Module]:
    """Returns ``(loss_fn(outputs, target [N, *S] int64) -> scalar, module)``.

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
        mod = model.criterion()
        return mod, mod
    from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, FIASLoss, LoMixLoss
    if supervision == "single":
        mod = DiceCELoss(to_onehot_y=True, softmax=True)

        def single(out, target):
            return mod(out[-1] if isinstance(out, (list, tuple)) else out, target)
        return single, mod
    if supervision == "deep":
        w = deep_supervision_weights(num_maps)
        mod = DeepSupervisionDiceCE(num_maps, weights=[x / sum(w) for x in w])
        return mod, mod
    if supervision == "fias":
        if num_maps < 2:
            raise ValueError("--supervision fias needs a model with deep-supervision outputs (auxiliary maps + "
                             f"the main output), this one gives {num_maps} map")
        mod = FIASLoss(num_maps)
        return mod, mod
    mod = LoMixLoss(num_maps, num_classes, spatial_dims)
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
