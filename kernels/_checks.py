"""Input validation shared by the launchers and modules: precise errors that name the argument."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_spatial_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_tensor(name: str, t, ndim: int | None = None, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
                 layout_hint: str = "") -> torch.Tensor:
    """Raise TypeError for a non-tensor or wrong dtype, ValueError for a wrong rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D{(' ' + layout_hint) if layout_hint else ''}, "
                         f"got shape {tuple(t.shape)}")
    return t


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must share device and dtype with ``ref``."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move both to one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; they must match")


def check_odd_sizes(name: str, sizes: Sequence[int]) -> tuple:
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError(f"{name} must name at least one kernel size")
    for k in sizes:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"{name} must hold positive odd integers (same padding), got {sizes!r}")
    return sizes


def look_up_option(name: str, value, options: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``options``, else a ValueError naming the closest one."""
    if value in options:
        return value
    import difflib

    close = difflib.get_close_matches(str(value), list(options), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}{hint}")
