"""Eager PyTorch references for the multi-kernel depthwise convolution.

Two levels, both plain PyTorch autograd:

* :func:`multi_kernel_dwconv_reference` is what an eager user writes for the methods: split the
  channels and call one depthwise conv per group, then concatenate (LGMSNet LMS, "grouped"), or
  ``x + DW_5(x) + DW_7(x)`` (FIAS DMK, "summed"). It is the test oracle and the bench baseline.
* :func:`dwconv_packed_reference` computes the op on the packed weight the kernels take
  (``weight[C, K^d]``, each channel group using the centred ``k_g^d`` window of a ``K^d`` grid). It
  is the CPU path of the registered op.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_CONV = {2: F.conv2d, 3: F.conv3d}


def multi_kernel_dwconv_reference(x: torch.Tensor, weights: Sequence[torch.Tensor],
                                  bias: Optional[torch.Tensor] = None,
                                  mode: str = "grouped", identity: bool = False) -> torch.Tensor:
    """Eager multi-kernel depthwise conv, stride 1, "same" padding.

    Args:
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        weights: one tensor per kernel size, ``(C_j, 1, k_j, k_j[, k_j])``; ``C_j = C / G`` in
            "grouped" mode (group j holds channels ``j*C/G .. (j+1)*C/G - 1``), ``C_j = C`` in "summed".
        bias: ``(C,)`` or None (added once per channel).
        mode: "grouped" or "summed".
        identity: "summed" only: add ``x`` itself (the DMK residual term).
    Returns:
        ``y`` with the shape of ``x``.
    """
    conv = _CONV[x.dim() - 2]
    if mode == "grouped":
        sizes = [w.shape[0] for w in weights]
        chunks = torch.split(x, sizes, dim=1)
        biases = torch.split(bias, sizes) if bias is not None else [None] * len(weights)
        outs = [conv(xc, w, b, padding=w.shape[-1] // 2, groups=w.shape[0])
                for xc, w, b in zip(chunks, weights, biases)]
        return torch.cat(outs, dim=1)
    y = x if identity else None
    for j, w in enumerate(weights):
        b = bias if j == 0 else None
        out = conv(x, w, b, padding=w.shape[-1] // 2, groups=w.shape[0])
        y = out if y is None else y + out
    return y


def dwconv_packed_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            group_kernel_sizes: Sequence[int]) -> torch.Tensor:
    """The registered op on packed weights.

    Args:
        x: ``(N, C, *S)`` with ``len(S)`` = d in {2, 3}.
        weight: ``(C, K^d)``, K = the largest kernel size; channel group g (``C/G`` channels) reads
            the centred ``k_g^d`` window of its ``K^d`` grid.
        bias: ``(C,)`` or None.
        group_kernel_sizes: ``(k_1, .., k_G)``.
    """
    d = x.dim() - 2
    C = x.shape[1]
    G = len(group_kernel_sizes)
    K = round(weight.shape[1] ** (1.0 / d))
    w = weight.reshape(C, 1, *([K] * d))
    cg = C // G
    outs = []
    for g, k in enumerate(group_kernel_sizes):
        lo = (K - k) // 2
        win = w[g * cg:(g + 1) * cg, :, *([slice(lo, lo + k)] * d)]
        b = bias[g * cg:(g + 1) * cg] if bias is not None else None
        outs.append(_CONV[d](x[:, g * cg:(g + 1) * cg], win, b, padding=k // 2, groups=cg))
    return outs[0] if G == 1 else torch.cat(outs, dim=1)


def dwconv_packed_reference_backward(grad_y, x, weight, group_kernel_sizes, has_bias: bool):
    """Gradients of :func:`dwconv_packed_reference`: ``(grad_x, grad_weight, grad_bias)``.

    Written with ``aten.convolution_backward`` (it runs below autograd, inside the registered op).
    grad_weight is zero outside each group's centred window; grad_bias is zeros when ``has_bias`` is False.
    """
    d = x.dim() - 2
    C = x.shape[1]
    G = len(group_kernel_sizes)
    K = round(weight.shape[1] ** (1.0 / d))
    cg = C // G
    w = weight.reshape(C, 1, *([K] * d))
    gw = torch.zeros_like(w)
    gxs, gbs = [], []
    for g, k in enumerate(group_kernel_sizes):
        lo = (K - k) // 2
        win = (slice(g * cg, (g + 1) * cg), slice(None), *([slice(lo, lo + k)] * d))
        gx_g, gw_g, gb_g = torch.ops.aten.convolution_backward(
            grad_y[:, g * cg:(g + 1) * cg], x[:, g * cg:(g + 1) * cg], w[win].contiguous(), [cg],
            [1] * d, [k // 2] * d, [1] * d, False, [0] * d, cg, [True, True, has_bias])
        gxs.append(gx_g)
        gw[win] = gw_g
        gbs.append(gb_g if has_bias else torch.zeros(cg, dtype=x.dtype, device=x.device))
    gx = gxs[0] if G == 1 else torch.cat(gxs, dim=1)
    return gx, gw.reshape(C, -1), torch.cat(gbs)
