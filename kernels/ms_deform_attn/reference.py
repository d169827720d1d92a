"""Eager PyTorch reference of multi-scale deformable attention, 2D and 3D.

This is the CPU path, the test oracle and the bench's eager baseline. It is Deformable-DETR's
``ms_deform_attn_core_pytorch`` (``fundamentalvision/Deformable-DETR: models/ops/functions/
ms_deform_attn_func.py``): the value is split per level, each level is sampled with ``F.grid_sample``
(``mode="bilinear"``, ``padding_mode="zeros"``, ``align_corners=False``) at ``grid = 2 * loc - 1``,
the samples are weighted by the attention weights and summed over levels and points. In 3D the same
with 5-D ``grid_sample`` (trilinear), locations in ``(x, y, z) = (W, H, D)`` order.

Shapes:

* ``value``: ``(N, S, M, Dh)``, levels concatenated, each flattened row-major (``S = sum prod(shape_l)``).
* ``spatial_shapes``: ``L`` rows ``(H, W)`` or ``(D, H, W)`` (Python ints).
* ``sampling_locations``: ``(N, Q, M, L, P, d)`` in [0, 1], ``(x, y[, z])``.
* ``attention_weights``: ``(N, Q, M, L, P)``.
* output: ``(N, Q, M * Dh)``.

The registered ops' reference path computes in fp32 and casts the results to the input dtypes (the
Triton kernels accumulate in fp32 too); their backward differentiates this formulation with
``torch.func.vjp`` (the custom-op bodies run below autograd).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: Sequence[Sequence[int]],
                             sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Deformable-DETR's pure-PyTorch multi-scale deformable attention (2D) and its 5-D generalisation (3D).

    Differentiable with ordinary autograd (the bench's eager baseline); computes in the inputs' dtype.
    """
    shapes = [tuple(int(s) for s in row) for row in spatial_shapes]
    N, S, M, Dh = value.shape
    _, Q, _, L, P, d = sampling_locations.shape
    sizes = [_prod(s) for s in shapes]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for lid, shape in enumerate(shapes):
        # (N, S_l, M, Dh) -> (N*M, Dh, *shape)
        v = value_list[lid].flatten(2).transpose(1, 2).reshape(N * M, Dh, *shape)
        # (N, Q, M, P, d) -> (N*M, Q, P, d) [2D] or (N*M, 1, Q, P, d) [3D]
        g = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        if d == 3:
            g = g.unsqueeze(1)
        s = F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        samples.append(s.reshape(N * M, Dh, Q, P))  # (N*M, Dh, Q, P)
    # (N, Q, M, L, P) -> (N*M, 1, Q, L*P)
    attn = attention_weights.transpose(1, 2).reshape(N * M, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * attn.to(value.dtype)).sum(-1).view(N, M * Dh, Q)
    return out.transpose(1, 2).contiguous()


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _fp32(*ts):
    return tuple(t.float() for t in ts)


def softmax_levels_points(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of ``(N, Q, M, L, P)`` attention logits jointly over levels x points (Deformable-DETR)."""
    N, Q, M, L, P = logits.shape
    return logits.reshape(N, Q, M, L * P).softmax(-1).view(N, Q, M, L, P)


def _core(value, spatial_shapes, loc, attn, softmax: bool):
    return ms_deform_attn_reference(value, spatial_shapes, loc, softmax_levels_points(attn) if softmax else attn)


def msda_reference_forward(value, spatial_shapes, sampling_locations, attention_weights,
                           softmax: bool = False) -> torch.Tensor:
    """The registered forward op's CPU path: fp32 computation, output in the value's dtype (``softmax``:
    ``attention_weights`` holds logits)."""
    out = _core(*_fp32(value), spatial_shapes, *_fp32(sampling_locations, attention_weights), softmax)
    return out.to(value.dtype)


def msda_reference_backward(grad_out, value, spatial_shapes, sampling_locations, attention_weights,
                            softmax: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_value, grad_sampling_locations, grad_attention_weights)`` by ``torch.func.vjp`` of the fp32
    formulation, each cast to its input's dtype."""
    out, vjp = torch.func.vjp(lambda v, loc, a: _core(v, spatial_shapes, loc, a, softmax),
                              *_fp32(value, sampling_locations, attention_weights))
    gv, gl, ga = vjp(grad_out.to(out.dtype))
    return gv.to(value.dtype), gl.to(sampling_locations.dtype), ga.to(attention_weights.dtype)
