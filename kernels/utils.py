"""Public helpers of the kernels package: the argument checks each op's input guard is built from, and the
2D/3D choices (conv / norm / pool class, interpolation mode) that models, losses and references share.

Exception kinds (one per kind of fault, each a subclass of the builtin a user already catches):

* :class:`InputTypeError` (``TypeError``): not a tensor, or a dtype the op does not take.
* :class:`InputShapeError` (``ValueError``): wrong rank or shape, inconsistent sizes between arguments.
* :class:`InputDeviceError` (``ValueError``): tensors of one call on different devices.
* :class:`InputDTypeMismatchError` (``TypeError`` and ``ValueError``): tensors that must share a dtype
  do not.
* :class:`InputValueError` (``ValueError``): bad values (labels out of range, NaN logits, an unknown option).

Every message names the argument, the rule and what was received.
"""
from __future__ import annotations

import difflib
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class InputTypeError(TypeError):
    """An argument is not a tensor, or has a dtype the op does not take."""


class InputShapeError(ValueError):
    """An argument has the wrong rank or shape."""


class InputDeviceError(ValueError):
    """Tensors of one call live on different devices."""


class InputDTypeMismatchError(TypeError, ValueError):
    """Tensors that must share a dtype do not (catchable as TypeError or ValueError)."""


class InputValueError(ValueError):
    """An argument holds values outside what the op is defined for."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- single-argument checks
def check_spatial_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise InputValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_tensor(name: str, t, ndim: Optional[int | Sequence[int]] = None,
                 dtypes: Iterable[torch.dtype] = FLOAT_DTYPES, layout_hint: str = "") -> torch.Tensor:
    """``t`` is a tensor (InputTypeError), of one of ``dtypes`` (InputTypeError) and of rank ``ndim``
    (an int or a tuple of allowed ranks; InputShapeError)."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        names = ", ".join(_dtype_name(d) for d in dtypes)
        raise InputTypeError(f"{name} must have dtype in ({names}), got {_dtype_name(t.dtype)}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(f"{r}-D" for r in ranks)
            raise InputShapeError(f"{name} must be {want}{(' ' + layout_hint) if layout_hint else ''}, "
                                  f"got shape {tuple(t.shape)}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int], why: str = "") -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise InputShapeError(f"{name} must have shape {tuple(shape)}{(' ' + why) if why else ''}, "
                              f"got {tuple(t.shape)}")
    return t


def check_odd_sizes(name: str, sizes: Sequence[int]) -> tuple:
    sizes = tuple(sizes)
    if not sizes:
        raise InputValueError(f"{name} must name at least one kernel size")
    for k in sizes:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise InputValueError(f"{name} must hold positive odd integers (same padding), got {sizes!r}")
    return sizes


def look_up_option(name: str, value, options: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``options``, else an InputValueError naming the closest one."""
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputValueError(f"{name} must be one of {tuple(options)}, got {value!r}{hint}")


# ----------------------------------------------------------------------------- relations between arguments
def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: bool = True) -> None:
    """``t`` shares the device (and, with ``dtype``, the dtype) of ``ref``."""
    if t.device != ref.device:
        raise InputDeviceError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                               "move both to one device")
    if dtype and t.dtype != ref.dtype:
        raise InputDTypeMismatchError(f"{name} has dtype {_dtype_name(t.dtype)} but {ref_name} has dtype "
                                      f"{_dtype_name(ref.dtype)}; they must match")


# ----------------------------------------------------------------------------- 2D / 3D choices
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_CONV_FN = {2: F.conv2d, 3: F.conv3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


def conv_type(spatial_dims: int):
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose_type(spatial_dims: int):
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_TRANSPOSE[check_spatial_dims(spatial_dims)]


def batch_norm_type(spatial_dims: int):
    return _BATCH_NORM[check_spatial_dims(spatial_dims)]


def instance_norm_type(spatial_dims: int):
    return _INSTANCE_NORM[check_spatial_dims(spatial_dims)]


def maxpool_type(spatial_dims: int):
    return _MAXPOOL[check_spatial_dims(spatial_dims)]


def conv_fn(spatial_dims: int):
    """``F.conv2d`` or ``F.conv3d``."""
    return _CONV_FN[check_spatial_dims(spatial_dims)]


def linear_mode(spatial_dims: int) -> str:
    """``"bilinear"`` (2D) or ``"trilinear"`` (3D): the interpolation mode of ``F.interpolate``."""
    return _LINEAR_MODE[check_spatial_dims(spatial_dims)]


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (2D) / trilinear (3D) resize of ``(N, C, *spatial)`` to ``size``, ``align_corners=False``;
    identity at equal size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=linear_mode(len(size)), align_corners=False)


__all__ = ["FLOAT_DTYPES", "INT_DTYPES", "InputTypeError", "InputShapeError", "InputDeviceError",
           "InputDTypeMismatchError", "InputValueError", "check_spatial_dims", "check_tensor", "check_shape",
           "check_odd_sizes", "look_up_option", "check_same", "conv_type", "conv_transpose_type",
           "batch_norm_type", "instance_norm_type", "maxpool_type", "conv_fn", "linear_mode", "upsample_to"]
