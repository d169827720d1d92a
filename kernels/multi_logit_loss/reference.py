"""Eager PyTorch reference of the softplus-weighted multi-logit Dice + CE loss (and LoMix mixing).

This is the CPU path, the test oracle and the bench's eager baseline. It mirrors the released LoMix
loss (``SLDGroup/LoMix: trainer.py``): every base map is upsampled to the label resolution with
``F.interpolate`` (bilinear / trilinear, ``align_corners=False``), the mutant maps are built with
plain tensor ops (add, multiply, concatenate + 1x1 conv, attention-weighted fusion), and each of the
``T`` supervised maps gets ``ce_weight * CE + dice_weight * Dice`` times its mixing weight.

Map order (shared with the kernels): the ``M`` base maps first, then for each operator in ``ops``
every subset of size ``2..M`` in :func:`itertools.combinations` order (size 2 first, lexicographic).

Parameter layout (shared with the kernels):

* ``concat_weight``: ``(R_c, C, C)`` with one ``(C, C)`` block per (subset, member) pair, subsets in
  map order; the released ``Conv(|S|*C -> C, 1x1)`` weight of subset ``S`` is
  ``cat([concat_weight[r_S + j] for j in range(|S|)], dim=1)``. ``concat_bias``: ``(n_subsets, C)``.
* ``attn_weight``: ``(R_a, C)``, one score conv ``C -> 1`` per (subset size ``s``, member ``j``), row
  ``s*(s-1)/2 - 1 + j``; shared by every subset of that size, as released. ``attn_bias``: ``(R_a,)``.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

OPS = ("add", "mul", "concat", "attention")
WEIGHT_MODES = ("softplus", "normalized", "fixed")


def subsets(num_maps: int) -> List[tuple]:
    """Subsets of ``range(num_maps)`` of size 2..num_maps, in the kernels' order."""
    return [s for k in range(2, num_maps + 1) for s in itertools.combinations(range(num_maps), k)]


def num_supervised_maps(num_maps: int, ops: Sequence[str]) -> int:
    return num_maps + len(ops) * len(subsets(num_maps))


def concat_rows(num_maps: int) -> int:
    return sum(len(s) for s in subsets(num_maps))


def attn_rows(num_maps: int) -> int:
    return sum(range(2, num_maps + 1))


def map_names(num_maps: int, ops: Sequence[str]) -> List[str]:
    """Readable names: ``p0 .. p{M-1}`` then ``op(p_i,p_j,..)`` in map order."""
    names = [f"p{i}" for i in range(num_maps)]
    for op in ops:
        names += [f"{op}({','.join(f'p{i}' for i in s)})" for s in subsets(num_maps)]
    return names


def transform_weights(raw: torch.Tensor, weight_mode: str) -> torch.Tensor:
    """``softplus`` (free LoMix weights), ``normalized`` (softplus rescaled so the weights sum to
    ``T * ln 2``, their value at zero init) or ``fixed`` (used as given, e.g. deep supervision)."""
    if weight_mode == "softplus":
        return F.softplus(raw)
    if weight_mode == "normalized":
        sp = F.softplus(raw)
        return sp * (raw.numel() * math.log(2.0) / sp.sum())
    return raw


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (2D) / trilinear (3D) upsampling, ``align_corners=False``; identity at equal size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def mix_maps(base: Sequence[torch.Tensor], ops: Sequence[str], concat_weight=None, concat_bias=None,
             attn_weight=None, attn_bias=None) -> List[torch.Tensor]:
    """The ``T`` supervised maps: the base maps, then every mutant (released LoMix semantics)."""
    M = len(base)
    subs = subsets(M)
    out = list(base)
    for op in ops:
        for si, S in enumerate(subs):
            xs = [base[i] for i in S]
            if op == "add":
                y = xs[0]
                for x in xs[1:]:
                    y = y + x
            elif op == "mul":
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
            elif op == "concat":
                r0 = sum(len(s) for s in subs[:si])
                C = xs[0].shape[1]
                w = torch.cat([concat_weight[r0 + j] for j in range(len(S))], dim=1)  # (C, |S| C)
                w = w.reshape(C, len(S) * C, *([1] * (xs[0].dim() - 2)))
                conv = F.conv2d if xs[0].dim() == 4 else F.conv3d
                y = conv(torch.cat(xs, dim=1), w, concat_bias[si])
            elif op == "attention":
                s = len(S)
                r0 = s * (s - 1) // 2 - 1
                scores = [torch.einsum("bc...,c->b...", x, attn_weight[r0 + j]) + attn_bias[r0 + j]
                          for j, x in enumerate(xs)]
                a = torch.softmax(torch.stack(scores, dim=1), dim=1)  # (B, s, *spatial)
                y = sum(a[:, j:j + 1] * x for j, x in enumerate(xs))
            else:
                raise ValueError(f"unknown mixing operator {op!r}")
            out.append(y)
    return out


def dice_ce_terms(logits: torch.Tensor, target: torch.Tensor, *, sigmoid: bool = False,
                  squared: bool = True, batch: bool = True, include_background: bool = True,
                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
    """``(CE, Dice)`` of one map, fp32. ``target``: integer labels ``(B, *spatial)``.

    softmax: CE = mean over voxels of ``-log softmax(z)[y]``; Dice on softmax probabilities against
    the one-hot labels. sigmoid: C == 1 -> ``p = sigmoid(z)``, ``g = y`` (0/1); C > 1 -> per-channel
    sigmoid against one-hot labels (multi-label); CE = mean BCE-with-logits over all elements.
    Dice per (b?, c): ``1 - (2 I + smooth_nr) / (P + G + smooth_dr)`` with ``P = sum p^2`` (squared)
    or ``sum p``; mean over the included classes (and samples when ``batch`` is False).
    """
    z = logits.float()
    B, C = z.shape[:2]
    y = target.long()
    if sigmoid:
        g = y.unsqueeze(1).float() if C == 1 else F.one_hot(y, C).movedim(-1, 1).float()
        ce = F.binary_cross_entropy_with_logits(z, g)
        p = torch.sigmoid(z)
    else:
        g = F.one_hot(y, C).movedim(-1, 1).float()
        ce = F.cross_entropy(z, y)
        p = torch.softmax(z, dim=1)
    if not include_background and C > 1:
        p, g = p[:, 1:], g[:, 1:]
    dims = [0] + list(range(2, z.dim())) if batch else list(range(2, z.dim()))
    inter = (p * g).sum(dims)
    pp = (p * p).sum(dims) if squared else p.sum(dims)
    gg = (g * g).sum(dims) if squared else g.sum(dims)
    dice = (1.0 - (2.0 * inter + smooth_nr) / (pp + gg + smooth_dr)).mean()
    return ce, dice


def multi_logit_dice_ce_reference(logits: Sequence[torch.Tensor], target: torch.Tensor,
                                  raw_weights: torch.Tensor, *, ops: Sequence[str] = (),
                                  concat_weight=None, concat_bias=None, attn_weight=None, attn_bias=None,
                                  weight_mode: str = "softplus", ce_weight: float = 0.3,
                                  dice_weight: float = 0.7, sigmoid: bool = False, squared: bool = True,
                                  batch: bool = True, include_background: bool = True,
                                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                                  return_per_map: bool = False):
    """Eager ``sum_t w_t (ce_weight CE_t + dice_weight Dice_t)`` over the base and mutant maps.

    Same arguments as :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`; returns the fp32
    scalar loss (and the per-map losses ``ce_weight CE_t + dice_weight Dice_t`` when asked).
    """
    size = target.shape[1:]
    base = [upsample_to(x, size) for x in logits]
    maps = mix_maps(base, ops, concat_weight, concat_bias, attn_weight, attn_bias)
    w = transform_weights(raw_weights.float(), weight_mode)
    per_map = []
    for z in maps:
        ce, dice = dice_ce_terms(z, target, sigmoid=sigmoid, squared=squared, batch=batch,
                                 include_background=include_background, smooth_nr=smooth_nr,
                                 smooth_dr=smooth_dr)
        per_map.append(ce_weight * ce + dice_weight * dice)
    per_map = torch.stack(per_map)
    loss = (w * per_map).sum()
    return (loss, per_map) if return_per_map else loss


def check_reference_inputs(logits: Sequence[torch.Tensor], target: torch.Tensor, num_classes: int,
                           sigmoid: bool) -> None:
    """The value checks the kernels do in-pass, done with torch ops on the reference path."""
    hi = 2 if (sigmoid and num_classes == 1) else num_classes
    if target.numel():
        lo_v, hi_v = int(target.min()), int(target.max())
        if lo_v < 0 or hi_v >= hi:
            raise ValueError(f"target holds labels outside [0, {hi - 1}] (min {lo_v}, max {hi_v}); "
                             f"num_classes is {num_classes}")
    for i, x in enumerate(logits):
        if not torch.isfinite(x).all():
            raise ValueError(f"logits[{i}] contains NaN or Inf")
