"""Autograd Function, torch.library registration and functional API of the multi-kernel dwconv.

Data path (both backends): ``multi_kernel_dwconv`` -> :func:`_guard` (every argument check, once) ->
packing of the per-kernel weights into one ``(C, K^d)`` tensor with differentiable ops ->
``MultiKernelDWConvFunction`` -> ``torch.ops.segfuse.dwconv_fwd`` / ``dwconv_bwd`` (registered custom
ops with fake implementations, so ``torch.compile`` traces through without graph breaks) -> dispatch:
the Triton launchers (:mod:`.triton`) or the eager reference (:mod:`.reference`). The Function takes the
backend from :func:`segfuse.kernels.dispatch.backend_for` once, in the forward, and hands it to both ops, so the
backward always runs on the forward's backend (also when it runs outside a ``force_backend`` block).

Summed mode packs ``identity + sum_j pad(W_j)`` into one kernel (one pass over ``x``); because the
packing is linear and differentiable, autograd hands each ``W_j`` the centre crop of the packed
weight gradient: separate, exact gradients per kernel.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..utils import (InputShapeError, InputTypeError, InputValueError, check_odd_sizes, check_same, check_shape,
                     check_tensor, look_up_option)
from ..dispatch import backend_for
from . import reference

MODES = ("grouped", "summed")


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("segfuse::dwconv_fwd", mutates_args=())
def _dwconv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   group_kernel_sizes: List[int], backend: str) -> torch.Tensor:
    if backend == "triton":
        from .triton import dwconv_fwd
        return dwconv_fwd(x, weight, bias, group_kernel_sizes)
    return reference.dwconv_packed_reference(x, weight, bias, group_kernel_sizes).contiguous(
        memory_format=_memory_format(x))


@_dwconv_fwd_op.register_fake
def _(x, weight, bias, group_kernel_sizes, backend):
    return torch.empty_like(x)


@torch.library.custom_op("segfuse::dwconv_bwd", mutates_args=())
def _dwconv_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   group_kernel_sizes: List[int], has_bias: bool, backend: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .triton import dwconv_bwd
        return dwconv_bwd(grad_y, x, weight, group_kernel_sizes, has_bias)
    gx, gw, gb = reference.dwconv_packed_reference_backward(grad_y, x, weight, group_kernel_sizes, has_bias)
    return gx.contiguous(memory_format=_memory_format(x)), gw, gb


@_dwconv_bwd_op.register_fake
def _(grad_y, x, weight, group_kernel_sizes, has_bias, backend):
    return (torch.empty_like(x), torch.empty_like(weight),
            torch.empty(x.shape[1], dtype=x.dtype, device=x.device))


def _memory_format(x: torch.Tensor):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


class MultiKernelDWConvFunction(torch.autograd.Function):
    """``y = dwconv(x, packed weight, bias)``; backward returns grads for x, weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, group_kernel_sizes):
        ctx.save_for_backward(x, weight)
        ctx.group_kernel_sizes = list(group_kernel_sizes)
        ctx.has_bias = bias is not None
        ctx.backend = backend_for(x.device)
        return torch.ops.segfuse.dwconv_fwd(x, weight, bias, list(group_kernel_sizes), ctx.backend)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        gx, gw, gb = torch.ops.segfuse.dwconv_bwd(grad_y, x, weight, ctx.group_kernel_sizes, ctx.has_bias,
                                                 ctx.backend)
        return gx, gw, (gb if ctx.has_bias else None), None


# ----------------------------------------------------------------------------- functional API
def pack_weights(weights: Sequence[torch.Tensor], mode: str, identity: bool, spatial_dims: int):
    """Pack per-kernel weights into ``(C, K^d)`` with differentiable ops.

    Returns ``(packed, group_kernel_sizes)``: grouped mode concatenates the groups (each centred in a
    ``K^d`` grid); summed mode adds the centred kernels (and a centre 1 for ``identity``).
    """
    sizes = [w.shape[-1] for w in weights]
    K = max(sizes)
    d = spatial_dims

    def centred(w):
        p = (K - w.shape[-1]) // 2
        w = w.reshape(w.shape[0], *w.shape[2:])
        return F.pad(w, [p] * (2 * d)) if p else w

    if mode == "grouped":
        packed = torch.cat([centred(w) for w in weights], dim=0)
        return packed.reshape(packed.shape[0], -1), sizes
    packed = centred(weights[0])
    for w in weights[1:]:
        packed = packed + centred(w)
    packed = packed.reshape(packed.shape[0], -1)
    if identity:
        delta = torch.zeros(K ** d, dtype=packed.dtype, device=packed.device)
        delta[(K ** d) // 2] = 1.0
        packed = packed + delta
    return packed, [K]


def multi_kernel_dwconv(x: torch.Tensor, weights: Sequence[torch.Tensor], bias: Optional[torch.Tensor] = None,
                        mode: str = "grouped", identity: bool = False) -> torch.Tensor:
    """Multi-kernel depthwise convolution, stride 1, "same" padding, 2D or 3D.

    Args:
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)``; fp32, fp16 or bf16; contiguous or channels-last.
        weights: one tensor per kernel size, shaped like a depthwise ``nn.Conv`` weight:
            ``(C/G, 1, k, k[, k])`` in "grouped" mode (G = len(weights)), ``(C, 1, k, k[, k])`` in "summed".
            Kernel sizes must be odd. Same dtype and device as ``x``.
        bias: ``(C,)`` or None.
        mode: "grouped": channel group g is convolved with ``weights[g]`` only (LGMSNet LMS);
            "summed": every channel is convolved with every kernel and the results summed (FIAS DMK).
        identity: "summed" only: also add ``x`` (``x + DW_5(x) + DW_7(x)``).
    Returns:
        ``y``: same shape, dtype and memory format as ``x``.

    Example:
        >>> x = torch.randn(2, 8, 32, 32)
        >>> ws = [torch.randn(2, 1, k, k) for k in (3, 5, 7, 9)]
        >>> multi_kernel_dwconv(x, ws).shape
        torch.Size([2, 8, 32, 32])
    """
    mode = _guard(x, weights, bias, mode, identity)
    packed, group_ks = pack_weights(weights, mode, identity, x.dim() - 2)
    return MultiKernelDWConvFunction.apply(x, packed, bias, group_ks)


def _guard(x, weights, bias, mode, identity) -> str:
    """Every check of the public arguments, once (both backends); returns the mode."""
    mode = look_up_option("mode", mode, MODES)
    check_tensor("x", x, ndim=(4, 5), layout_hint="(N, C, H, W) or (N, C, D, H, W)")
    d = x.dim() - 2
    if isinstance(weights, torch.Tensor) or not isinstance(weights, (list, tuple)) or not len(weights):
        raise InputTypeError("weights must be a non-empty list of tensors, one per kernel size")
    C = x.shape[1]
    G = len(weights)
    if mode == "grouped" and C % G:
        raise InputShapeError(f"x has {C} channels, not divisible by the {G} groups (one per kernel size)")
    if identity and mode != "summed":
        raise InputValueError("identity=True is only defined for mode='summed'")
    expect_c = C // G if mode == "grouped" else C
    for j, w in enumerate(weights):
        name = f"weights[{j}]"
        check_tensor(name, w)
        check_same(name, w, "x", x)
        k = w.shape[-1]
        check_odd_sizes(f"{name} kernel size", [k])
        check_shape(name, w, (expect_c, 1, *([k] * d)), f"for {mode} mode with x of shape {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias)
        check_same("bias", bias, "x", x)
        check_shape("bias", bias, (C,))
    return mode
