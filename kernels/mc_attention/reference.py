"""Eager PyTorch references of Monte-Carlo attention (SvANet ``MoCAttention``) and the FIAS spatial variant.

The random subset
-----------------
SvANet's training step draws a pool size ``k`` from the choices, shuffles the spatial positions with one
random permutation, average-pools the shuffled map to ``k x k`` and keeps one cell: the per-channel
descriptor is the mean over a random subset of about ``S / k^2`` positions, a Monte-Carlo estimate of
global average pooling (GAP), with the same subset for every batch item and channel. Here the subset is
defined without a permutation tensor, so any program of a kernel can tell membership on its own:

* ``subset``: an int64 tensor ``(3,)`` of raw draws ``(r_k, r_cell, seed)``, each in ``[0, 2^31)``, drawn
  on the device (:func:`segfuse.kernels.mc_attention.draw_subset`); the kernels load it through a pointer
  and this reference reads the same tensor, so both paths pick the same subset, with no host read.
* ``k = pool_sizes[r_k % len(pool_sizes)]``; ``K = k^d`` cells (``d`` = 2 or 3 spatial dims: the 3D
  generalisation pools to ``k x k x k``); ``cell = r_cell % K``.
* position ``p`` (the row-major flat spatial index, whatever the memory format) is a member iff
  ``mix32(p ^ mix32(seed)) % K == cell``, where :func:`mix32` is an integer finaliser (xor-shift /
  multiply rounds in int64 with 32-bit masks and multipliers below ``2^31``, so products stay below
  ``2^63`` and torch and Triton compute identical bits).
* descriptor ``= sum over members / count``; if ``count == 0`` (tiny maps) the global mean; ``k == 1``
  makes every position a member: exactly GAP. Eval (``subset is None``) is plain GAP.

The gate is SE-style: ``sigmoid(W2 relu(W1 desc + b1) + b2)``, ``y = x * gate`` (per ``(n, c)``).

Functions
---------
* :func:`mc_attention_reference`: the eager formulation with autograd (test oracle).
* :func:`mca_reference_forward` / :func:`mca_reference_backward`: the registered op's reference path
  (forward with its saved descriptor / gate / count; backward by ``torch.func.vjp`` of the fp32
  formulation: the custom-op bodies run below autograd).
* :func:`mc_attention_svanet`: SvANet's literal recipe (``randperm`` shuffle + gather copy + adaptive pool
  + pick a cell), a different random subset; the bench's eager comparison.
* :func:`mc_spatial_attention_reference`: the FIAS-scaffold spatial gate (eager only).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils import upsample_to

MASK32 = 0xFFFFFFFF
MIX_MUL1 = 0x7FEB352D  # odd multipliers below 2^31: (h < 2^32) * m < 2^63, no int64 overflow
MIX_MUL2 = 0x2C1B3C6D


def mix32(h: torch.Tensor) -> torch.Tensor:
    """32-bit integer finaliser on an int64 tensor of values in ``[0, 2^32)`` (the kernels' ``_mix32``)."""
    h = h & MASK32
    h = h ^ (h >> 16)
    h = (h * MIX_MUL1) & MASK32
    h = h ^ (h >> 15)
    h = (h * MIX_MUL2) & MASK32
    return h ^ (h >> 16)


def subset_rule(subset: torch.Tensor, pool_sizes: Sequence[int], spatial_dims: int):
    """``(k, K = k^d, cell, mixed seed)`` as 0-d int64 tensors on ``subset``'s device (no host read)."""
    r_k, r_cell, seed = subset[0], subset[1], subset[2]
    idx = r_k % len(pool_sizes)
    k = torch.zeros_like(r_k)
    for j, v in enumerate(pool_sizes):
        k = torch.where(idx == j, v, k)
    kk = k ** spatial_dims
    return k, kk, r_cell % kk, mix32(seed)


def member_mask(subset: torch.Tensor, pool_sizes: Sequence[int], spatial_shape: Sequence[int]) -> torch.Tensor:
    """Bool ``(S,)``: which row-major flat spatial positions belong to the subset of ``subset``."""
    S = math.prod(spatial_shape)
    _, kk, cell, seed = subset_rule(subset, pool_sizes, len(spatial_shape))
    p = torch.arange(S, device=subset.device, dtype=torch.int64)
    return (mix32(p ^ seed) % kk) == cell


def _memory_format(x: torch.Tensor):
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _gate(desc, w1, b1, w2, b2):
    """SE excitation in fp32: ``sigmoid(W2 relu(W1 desc + b1) + b2)``, ``desc (N, C)``."""
    return torch.sigmoid(F.linear(torch.relu(F.linear(desc, w1.float(), b1.float())), w2.float(), b2.float()))


def _descriptor(xf: torch.Tensor, subset: Optional[torch.Tensor], pool_sizes: Sequence[int]):
    """``(desc (N, C) fp32, count (1,) int64)`` of an fp32 ``x``."""
    spatial = xf.shape[2:]
    S = math.prod(spatial)
    flat = xf.reshape(xf.shape[0], xf.shape[1], S)
    if subset is None:
        return flat.sum(-1) / S, torch.full((1,), S, dtype=torch.int64, device=xf.device)
    mask = member_mask(subset, pool_sizes, spatial)
    count = mask.sum().reshape(1)
    msum = (flat * mask).sum(-1)
    desc = torch.where(count > 0, msum / count.clamp_min(1), flat.sum(-1) / S)
    return desc, count


def _core(x, w1, b1, w2, b2, subset, pool_sizes):
    """fp32 ``(y, desc, gate, count)``; differentiable in x and the weights."""
    xf = x.float()
    desc, count = _descriptor(xf, subset, pool_sizes)
    gate = _gate(desc, w1, b1, w2, b2)
    y = xf * gate.reshape(*gate.shape, *([1] * (x.dim() - 2)))
    return y, desc, gate, count


def mc_attention_reference(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                           b2: torch.Tensor, subset: Optional[torch.Tensor] = None,
                           pool_sizes: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Eager Monte-Carlo channel attention (differentiable; computed in fp32).

    Args:
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        w1: ``(hidden, C)``, b1: ``(hidden,)``, w2: ``(C, hidden)``, b2: ``(C,)``.
        subset: int64 ``(3,)`` raw draws (see the module docstring), or None for eval (GAP).
        pool_sizes: the pool-size choices ``k``.
    Returns:
        ``y = x * gate`` in ``x``'s dtype and memory format.
    """
    y = _core(x, w1, b1, w2, b2, subset, pool_sizes)[0]
    return y.to(x.dtype).contiguous(memory_format=_memory_format(x))


def mca_reference_forward(x, w1, b1, w2, b2, subset, pool_sizes):
    """The registered forward op's reference path: ``(y, desc fp32 (N, C), gate fp32 (N, C), count (1,))``."""
    y, desc, gate, count = _core(x, w1, b1, w2, b2, subset, pool_sizes)
    return y.to(x.dtype).contiguous(memory_format=_memory_format(x)), desc, gate, count


def mca_reference_backward(grad_y, x, w1, b1, w2, b2, subset, pool_sizes):
    """``(grad_x, grad_w1, grad_b1, grad_w2, grad_b2)`` by ``torch.func.vjp`` of the fp32 formulation, each in
    its input's dtype (grad_x in x's memory format)."""
    def f(xx, a, b, c, d):
        return _core(xx, a, b, c, d, subset, pool_sizes)[0]

    _, vjp = torch.func.vjp(f, x.float(), w1.float(), b1.float(), w2.float(), b2.float())
    gx, g1, gb1, g2, gb2 = vjp(grad_y.float())
    return (gx.to(x.dtype).contiguous(memory_format=_memory_format(x)), g1.to(w1.dtype), gb1.to(b1.dtype),
            g2.to(w2.dtype), gb2.to(b2.dtype))


def mc_attention_svanet(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                        b2: torch.Tensor, k: int, cell: int, perm: torch.Tensor) -> torch.Tensor:
    """SvANet's literal training step (``MoCAttention`` with ``MoCOrder=True``), 2D and 3D: shuffle the
    spatial positions with ``perm`` (a ``torch.randperm(S)``; a gather copy), adaptive-average-pool the
    shuffled map to ``k^d``, take cell ``cell`` (row-major) as the descriptor, gate ``x``. Its subset
    differs from the hash rule's; this is the bench's eager comparison, not the oracle."""
    N, C, *spatial = x.shape
    xs = x.reshape(N, C, -1)[:, :, perm].reshape(x.shape)
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    desc = pool(xs, k).reshape(N, C, -1)[:, :, cell]
    gate = _gate(desc.float(), w1, b1, w2, b2).to(x.dtype)
    return x * gate.reshape(N, C, *([1] * len(spatial)))


# ----------------------------------------------------------------------------- spatial variant (FIAS scaffold)
def spatial_gate_maps(x: torch.Tensor, pool_sizes: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """Per pool size ``p``: the channel-mean map ``(N, 1, *S)`` average-pooled to ``p^d`` and resized back
    (bilinear / trilinear, ``align_corners=False``)."""
    spatial = x.shape[2:]
    m = x.float().mean(1, keepdim=True)
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    return tuple(upsample_to(pool(m, p), spatial) for p in pool_sizes)


def mc_spatial_attention_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                   subset: Optional[torch.Tensor] = None,
                                   pool_sizes: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """FIAS-scaffold Monte-Carlo attention (a spatial gate), eager torch only.

    ``maps`` = :func:`spatial_gate_maps`; training (``subset`` given) takes
    ``maps[subset[0] % len(pool_sizes)]`` (selected on the device, no host read), eval (``subset`` None)
    the mean of all of them; ``gate = sigmoid(weight * map + bias)`` (a 1x1 conv 1 -> 1), ``y = x * gate``.
    ``weight``, ``bias``: ``(1,)``. Returns ``y`` in x's dtype.
    """
    maps = spatial_gate_maps(x, pool_sizes)
    if subset is None:
        sel = sum(maps) / len(maps)
    else:
        idx = subset[0] % len(pool_sizes)
        sel = torch.zeros_like(maps[0])
        for j, m in enumerate(maps):
            sel = torch.where(idx == j, m, sel)
    gate = torch.sigmoid(sel * weight.float() + bias.float())
    return (x.float() * gate).to(x.dtype)
