"""Layer factories and helpers shared by the models: one code path for 2D and 3D.

Norm and activation arguments follow MONAI: a name (``"batch"``) or a ``(name, kwargs)`` tuple
(``("group", {"num_groups": 4})``).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

# every 2D/3D choice (conv / norm / pool class, interpolation mode) comes from segfuse.kernels.utils
from segfuse.kernels.utils import batch_norm_type, conv_type, instance_norm_type, linear_mode, look_up_option

NormSpec = Union[str, Tuple[str, dict]]

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU}
NORMS = ("batch", "instance", "group")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def get_act(name: str) -> nn.Module:
    """A fresh activation module: "relu", "relu6", "silu" or "gelu"."""
    return _ACTS[look_up_option("act", name, tuple(_ACTS))]()


def get_norm(norm: NormSpec, spatial_dims: int, channels: int) -> nn.Module:
    """A norm layer over ``channels``: "batch", "instance" (torch default ``affine=False``) or "group".

    ``norm`` is a name or ``(name, kwargs)``; "group" needs ``{"num_groups": G}``.
    """
    if isinstance(norm, (tuple, list)):
        if len(norm) != 2 or not isinstance(norm[1], dict):
            raise TypeError(f"norm must be a name or a (name, kwargs) tuple, got {norm!r}")
        name, kwargs = norm[0], dict(norm[1])
    elif isinstance(norm, str):
        name, kwargs = norm, {}
    else:
        raise TypeError(f"norm must be a name or a (name, kwargs) tuple, got {type(norm).__name__}")
    name = look_up_option("norm", name, NORMS)
    if name == "batch":
        return batch_norm_type(spatial_dims)(channels, **kwargs)
    if name == "instance":
        return instance_norm_type(spatial_dims)(channels, **kwargs)
    if "num_groups" not in kwargs:
        raise ValueError("norm ('group', kwargs) needs kwargs['num_groups']")
    return nn.GroupNorm(num_channels=channels, **kwargs)


class ConvNormAct(nn.Sequential):
    """``conv (k, stride 1, pad k//2) -> norm -> act``, 2D or 3D (MobileViT's conv_1x1_bn / conv_nxn_bn)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 1,
                 norm: NormSpec = "batch", act: str = "silu", bias: bool = False, groups: int = 1):
        super().__init__(
            conv_type(spatial_dims)(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                    groups=groups, bias=bias),
            get_norm(norm, spatial_dims, out_channels),
            get_act(act))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle for ``(N, C, *spatial)``: a fixed permutation of the channels."""
    n, c = x.shape[:2]
    if groups in (1, c):
        return x
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


# ----------------------------------------------------------------------------- input checks, pad/crop
def check_input(x, spatial_dims: int, in_channels: int, model: str) -> None:
    """TypeError for a non-tensor, ValueError for a wrong rank or channel count."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: x must be a torch.Tensor, got {type(x).__name__}")
    layout = "(N, C, H, W)" if spatial_dims == 2 else "(N, C, D, H, W)"
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{model}: x must be {spatial_dims + 2}-D {layout} for spatial_dims={spatial_dims}, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model}: x has {x.shape[1]} channels but the model was built with "
                         f"in_channels={in_channels}")


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad the spatial dims of ``x`` at their high end up to a multiple of ``multiple`` (no-op if already).

    ``mode`` is an ``F.pad`` mode; "constant" pads with zeros."""
    pads = []
    for s in reversed(x.shape[2:]):
        pads += [0, (-s) % multiple]
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Keep the first ``size[i]`` elements of each spatial dim (inverse of :func:`pad_to_multiple`)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]


def strided_size(size: Sequence[int], stride: int) -> Tuple[int, ...]:
    """Spatial size of a stride-``stride`` map of an input of ``size`` (``ceil(size / stride)``)."""
    return tuple(math.ceil(s / stride) for s in size)


def resize_logits(logits: Union[torch.Tensor, Sequence[torch.Tensor]], size: Sequence[int],
                  strides: Sequence[int]) -> list:
    """Bring native-resolution logits to the input grid: upsample map i by ``strides[i]`` (bilinear /
    trilinear, ``align_corners=False``, as the released models do) and crop to ``size``.

    For inputs whose size is a multiple of every stride this equals ``F.interpolate(p, size=size)``.
    ``strides`` is the model's ``output_strides`` (one per map, coarse -> fine).
    """
    maps = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if len(maps) != len(strides):
        raise ValueError(f"got {len(maps)} logit maps but {len(strides)} strides")
    out = []
    for p, s in zip(maps, strides):
        if s != 1:
            p = F.interpolate(p, scale_factor=s, mode=linear_mode(p.dim() - 2), align_corners=False)
        out.append(crop_to(p, size))
    return out
