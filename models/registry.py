"""Model registry: ``create_model(name, spatial_dims, in_channels, num_classes, ...)`` and ``list_models()``."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from segfuse.kernels.utils import look_up_option

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``fn(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw)``."""
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    return deco


def list_models() -> List[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, spatial_dims: int, in_channels: int, num_classes: int,
                 deep_supervision: bool = False, **kw) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models` (a close misspelling gets a did-you-mean hint).
        spatial_dims: 2 or 3 (each model states which it supports).
        in_channels: input channels.
        num_classes: output logit channels.
        deep_supervision: in training mode ``forward`` returns a list of native-resolution logits,
            coarse -> fine (strides in ``model.output_strides``); otherwise one tensor at input size.
        **kw: model-specific options (see the model class).

    Example:
        >>> net = create_model("lgmsnet", 2, 3, 1)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return _MODELS[look_up_option("name", name, list_models())](
        spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
