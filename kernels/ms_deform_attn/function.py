"""Autograd Function, torch.library registration and functional API of multi-scale deformable attention.

Data path (both backends): ``ms_deform_attn`` -> :func:`_guard` (every argument check, once; level
shapes become a tuple of Python ints) -> ``MSDeformAttnFunction`` -> ``torch.ops.segfuse.msda_fwd`` /
``msda_bwd`` (registered custom ops with fake implementations, so ``torch.compile(fullgraph=True)``
traces through) -> dispatch: the Triton launchers (:mod:`.triton`) or the eager reference
(:mod:`.reference`). The Function takes the backend from :func:`segfuse.kernels.dispatch.backend_for` once, in the
forward, and hands it to both ops.

Level shapes travel to the ops as a flat ``List[int]`` (``L * d`` Python ints), so no op reads a
device tensor for them. A ``spatial_shapes`` / ``level_start_index`` given as a tensor is read once
in the guard (``.tolist()``: a device read for a CUDA tensor; under ``torch.compile`` pass Python
ints, or ``level_start_index=None``).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from ..dispatch import backend_for
from ..utils import InputShapeError, InputTypeError, InputValueError, check_same, check_shape, check_tensor
from . import reference

MAX_HEAD_DIM = 256


def _unflatten(shapes: List[int], ndim: int) -> List[Tuple[int, ...]]:
    return [tuple(shapes[i:i + ndim]) for i in range(0, len(shapes), ndim)]


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("segfuse::msda_fwd", mutates_args=())
def _msda_fwd_op(value: torch.Tensor, spatial_shapes: List[int], sampling_locations: torch.Tensor,
                 attention_weights: torch.Tensor, softmax: bool, backend: str) -> torch.Tensor:
    shapes = _unflatten(spatial_shapes, sampling_locations.shape[-1])
    if backend == "triton":
        from .triton import msda_fwd
        return msda_fwd(value, shapes, sampling_locations, attention_weights, softmax)
    return reference.msda_reference_forward(value, shapes, sampling_locations, attention_weights, softmax)


@_msda_fwd_op.register_fake
def _(value, spatial_shapes, sampling_locations, attention_weights, softmax, backend):
    N, _, M, D = value.shape
    return value.new_empty(N, sampling_locations.shape[1], M * D)


@torch.library.custom_op("segfuse::msda_bwd", mutates_args=())
def _msda_bwd_op(grad_out: torch.Tensor, value: torch.Tensor, spatial_shapes: List[int],
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor, deterministic: bool,
                 softmax: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shapes = _unflatten(spatial_shapes, sampling_locations.shape[-1])
    if backend == "triton":
        from .triton import msda_bwd
        return msda_bwd(grad_out, value, shapes, sampling_locations, attention_weights, deterministic, softmax)
    # torch.func.vjp of the fp32 formulation: bitwise reproducible on CPU (no atomics)
    return reference.msda_reference_backward(grad_out, value, shapes, sampling_locations, attention_weights,
                                             softmax)


@_msda_bwd_op.register_fake
def _(grad_out, value, spatial_shapes, sampling_locations, attention_weights, deterministic, softmax, backend):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


class MSDeformAttnFunction(torch.autograd.Function):
    """``out = msda(value, locations, weights)``; backward returns grads for all three."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations, attention_weights, deterministic, softmax):
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        ctx.spatial_shapes = list(spatial_shapes)
        ctx.deterministic = bool(deterministic)
        ctx.softmax = bool(softmax)
        ctx.backend = backend_for(value.device)
        return torch.ops.segfuse.msda_fwd(value, ctx.spatial_shapes, sampling_locations, attention_weights,
                                          ctx.softmax, ctx.backend)

    @staticmethod
    def backward(ctx, grad_out):
        value, loc, attn = ctx.saved_tensors
        gv, gl, ga = torch.ops.segfuse.msda_bwd(grad_out, value, ctx.spatial_shapes, loc, attn,
                                                ctx.deterministic, ctx.softmax, ctx.backend)
        return gv, None, gl, ga, None, None


# ----------------------------------------------------------------------------- functional API
def ms_deform_attn(value: torch.Tensor, spatial_shapes, level_start_index, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor, *, deterministic: bool = False,
                   softmax: bool = False) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable-DETR ``MSDeformAttnFunction`` semantics), 2D and 3D.

    Args:
        value: ``(N, S, M, Dh)``; fp32, fp16 or bf16; ``Dh`` a multiple of 8, at most 256. Levels
            concatenated along S, each flattened row-major.
        spatial_shapes: ``L`` rows ``(H, W)`` (2D) or ``(D, H, W)`` (3D): a list of tuples of Python ints
            (no device read) or an integer tensor ``(L, d)`` (read once). ``sum prod(row) == S``.
        level_start_index: ``(L,)`` exclusive cumulative sum of the level sizes (list or integer tensor),
            or None. Checked against ``spatial_shapes``; the op derives the starts itself.
        sampling_locations: ``(N, Q, M, L, P, d)``, normalised to [0, 1], ``(x, y[, z]) = (W, H[, D])``
            order; any float dtype (computed in fp32).
        attention_weights: ``(N, Q, M, L, P)``, same dtype as ``sampling_locations``.
        deterministic: bitwise-reproducible grad of ``value`` (sorted gather instead of fp32 atomics;
            costs memory and a sort, see :mod:`segfuse.kernels.ms_deform_attn.triton`).
        softmax: ``attention_weights`` holds logits; the softmax jointly over levels x points per
            (query, head) runs inside the kernels, forward and backward (the gradient returned is the
            logits'). False (default) keeps Deformable-DETR's semantics (weights given).
    Returns:
        ``(N, Q, M * Dh)`` in the value's dtype. Sampling equals ``F.grid_sample(mode="bilinear",
        padding_mode="zeros", align_corners=False)`` at ``2 * loc - 1``.

    Example:
        >>> v = torch.randn(1, 4 * 6 + 2 * 3, 2, 8)
        >>> loc = torch.rand(1, 5, 2, 2, 3, 2)
        >>> a = torch.rand(1, 5, 2, 2, 3)
        >>> ms_deform_attn(v, [(4, 6), (2, 3)], [0, 24], loc, a).shape
        torch.Size([1, 5, 16])
    """
    value, shapes, sampling_locations, attention_weights = _guard(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, deterministic, softmax)
    flat = [int(v) for s in shapes for v in s]
    return MSDeformAttnFunction.apply(value, flat, sampling_locations, attention_weights, deterministic, softmax)


def _int_rows(name: str, x) -> list:
    """A list (of lists) of Python ints from a sequence or an integer tensor (one read)."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise InputTypeError(f"{name} must be an integer tensor or a list of ints, got dtype "
                                 f"{str(x.dtype).replace('torch.', '')}")
        return x.tolist()
    if not isinstance(x, (list, tuple)):
        raise InputTypeError(f"{name} must be a list/tuple of ints or an integer tensor, got {type(x).__name__}")
    return [list(r) if isinstance(r, (list, tuple)) else r for r in x]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _guard(value, spatial_shapes, level_start_index, loc, attn, deterministic, softmax):
    """Every check of the public arguments, once (both backends). Returns ``(value, shapes, loc, attn)``
    with the tensors contiguous and ``shapes`` a list of tuples of Python ints."""
    check_tensor("value", value, ndim=4, layout_hint="(N, S, M, Dh)")
    check_tensor("sampling_locations", loc, ndim=6, layout_hint="(N, Q, M, L, P, d)")
    check_tensor("attention_weights", attn, ndim=5, layout_hint="(N, Q, M, L, P)")
    for name, flag in (("deterministic", deterministic), ("softmax", softmax)):
        if not isinstance(flag, bool):
            raise InputTypeError(f"{name} must be a bool, got {type(flag).__name__}")
    check_same("sampling_locations", loc, "value", value, dtype=False)
    check_same("attention_weights", attn, "sampling_locations", loc)
    N, S, M, Dh = value.shape
    if Dh % 8 or Dh < 8 or Dh > MAX_HEAD_DIM:
        raise InputShapeError(f"value head dim (last axis) must be a multiple of 8 between 8 and {MAX_HEAD_DIM}, "
                              f"got {Dh} (value shape {tuple(value.shape)})")
    d = loc.shape[-1]
    if d not in (2, 3):
        raise InputShapeError(f"sampling_locations last dim must be 2 (x, y) or 3 (x, y, z), got {d} "
                              f"(shape {tuple(loc.shape)})")
    rows = _int_rows("spatial_shapes", spatial_shapes)
    if not rows or not all(isinstance(r, list) and len(r) in (2, 3) and all(_is_int(v) and v > 0 for v in r)
                           for r in rows):
        raise InputValueError(f"spatial_shapes must be a non-empty list of (H, W) or (D, H, W) rows of positive "
                              f"ints, got {rows!r}")
    if any(len(r) != len(rows[0]) for r in rows):
        raise InputShapeError(f"spatial_shapes rows must all have 2 or all have 3 entries, got {rows!r}")
    if len(rows[0]) != d:
        raise InputShapeError(f"sampling_locations last dim is {d} but spatial_shapes rows have {len(rows[0])} "
                              f"entries ({'(H, W)' if len(rows[0]) == 2 else '(D, H, W)'}); they must match")
    shapes = [tuple(r) for r in rows]
    L = len(shapes)
    sizes = [reference._prod(s) for s in shapes]
    if sum(sizes) != S:
        raise InputShapeError(f"spatial_shapes {shapes} hold {sum(sizes)} tokens but value has S = {S} "
                              f"(value shape {tuple(value.shape)}); they must be equal")
    if level_start_index is not None:
        starts = _int_rows("level_start_index", level_start_index)
        expect = [sum(sizes[:i]) for i in range(L)]
        if starts != expect:
            raise InputValueError(f"level_start_index must be the exclusive cumulative sum of the level sizes "
                                  f"{expect} for spatial_shapes {shapes}, got {starts}")
    Q, P = loc.shape[1], loc.shape[4]
    if loc.shape[0] != N or loc.shape[2] != M or loc.shape[3] != L or Q < 1 or P < 1:
        raise InputShapeError(f"sampling_locations must have shape (N={N}, Q, M={M}, L={L}, P, {d}) with Q, P >= 1, "
                              f"got {tuple(loc.shape)}")
    check_shape("attention_weights", attn, (N, Q, M, L, P), "(N, Q, M, L, P) of sampling_locations")
    if N < 1 or S < 1 or M < 1:
        raise InputShapeError(f"value must have N, S, M >= 1, got shape {tuple(value.shape)}")
    return value.contiguous(), shapes, loc.contiguous(), attn.contiguous()
