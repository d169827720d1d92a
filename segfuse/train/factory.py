"""The one place that binds ``segfuse train`` to models and losses.

``build_model`` uses ``segfuse.models.create_model`` for registered names and the local plain
``unet`` (:mod:`segfuse.train.unet`, the baseline) for ``"unet"``. ``build_loss`` uses
``segfuse.losses`` (fused kernels on CUDA, eager references on CPU).
"""
from __future__ import annotations

import logging
from typing import Callable, List, Tuple

import torch
from torch import nn

from .unet import UNet

log = logging.getLogger(__name__)
SUPERVISIONS = ("single", "deep", "lomix")


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


def build_loss(supervision: str, num_maps: int, num_classes: int, spatial_dims: int
               ) -> Tuple[Callable, nn.Module]:
    """Returns ``(loss_fn(outputs, target [N, *S] int64) -> scalar, module)``.

    ``module`` holds the loss's learnable parameters (LoMix weights) and buffers; it is trained and
    checkpointed with the model. ``outputs`` is one logits tensor (``single``) or the model's list of
    logits coarse -> fine (``deep``/``lomix``).
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"--supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, LoMixLoss
    if supervision == "single":
        mod = DiceCELoss(to_onehot_y=True, softmax=True)

        def single(out, target):
            return mod(out[-1] if isinstance(out, (list, tuple)) else out, target)
        return single, mod
    if supervision == "deep":
        w = deep_supervision_weights(num_maps)
        mod = DeepSupervisionDiceCE(num_maps, weights=[x / sum(w) for x in w])
        return mod, mod
    mod = LoMixLoss(num_maps, num_classes, spatial_dims)
    return mod, mod


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
