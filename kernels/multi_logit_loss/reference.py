"""Eager PyTorch reference of the softplus-weighted multi-logit Dice + CE loss (and LoMix mixing).

This is the CPU path, the test oracle and the bench's eager baseline. It mirrors the released LoMix
loss (``SLDGroup/LoMix: trainer.py``): every base map is upsampled to the label resolution with
``F.interpolate`` (bilinear / trilinear, ``align_corners=False``; or nearest with ``upsample="nearest"``),
the mutant maps are built with
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

from ..utils import conv_fn, upsample_to

OPS = ("add", "mul", "concat", "attention", "mean")  # every operator the kernels know
LOMIX_OPS = OPS[:4]  # the four LoMix operators (the paper's mutant set)
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


def mix_maps(base: Sequence[torch.Tensor], ops: Sequence[str], concat_weight=None, concat_bias=None,
             attn_weight=None, attn_bias=None) -> List[torch.Tensor]:
    """The ``T`` supervised maps: the base maps, then every mutant (released LoMix semantics)."""
    M = len(base)
    subs = subsets(M)
    out = list(base)
    for op in ops:
        for si, S in enumerate(subs):
            xs = [base[i] for i in S]
            if op in ("add", "mean"):
                y = xs[0]
                for x in xs[1:]:
                    y = y + x
                if op == "mean":  # FIAS: each subset of auxiliary maps is averaged (MERIT sums: "add")
                    y = y / len(xs)
            elif op == "mul":
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
            elif op == "concat":
                r0 = sum(len(s) for s in subs[:si])
                C = xs[0].shape[1]
                w = torch.cat([concat_weight[r0 + j] for j in range(len(S))], dim=1)  # (C, |S| C)
                w = w.reshape(C, len(S) * C, *([1] * (xs[0].dim() - 2)))
                y = conv_fn(xs[0].dim() - 2)(torch.cat(xs, dim=1), w, concat_bias[si])
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


def upsample_maps(maps: Sequence[torch.Tensor], size, upsample: str = "linear") -> List[torch.Tensor]:
    """Each map resized to ``size`` with ``F.interpolate`` (``upsample="linear"``: bilinear / trilinear,
    ``align_corners=False``; ``"nearest"``); a map already at ``size`` is returned as is."""
    size = tuple(size)
    if upsample == "nearest":
        return [x if tuple(x.shape[2:]) == size else F.interpolate(x, size=size, mode="nearest") for x in maps]
    return [upsample_to(x, size) for x in maps]


def dice_ce_terms(logits: torch.Tensor, target: torch.Tensor, *, sigmoid: bool = False,
                  squared: bool = True, batch: bool = True, include_background: bool = True,
                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, ignore_index=None):
    """``(CE, Dice)`` of one map, fp32. ``target``: integer labels ``(B, *spatial)``.

    softmax: CE = mean over voxels of ``-log softmax(z)[y]``; Dice on softmax probabilities against
    the one-hot labels. sigmoid: C == 1 -> ``p = sigmoid(z)``, ``g = y`` (0/1); C > 1 -> per-channel
    sigmoid against one-hot labels (multi-label); CE = mean BCE-with-logits over all elements.
    Dice per (b?, c): ``1 - (2 I + smooth_nr) / (P + G + smooth_dr)`` with ``P = sum p^2`` (squared)
    or ``sum p``; mean over the included classes (and samples when ``batch`` is False).
    ``ignore_index``: voxels with that label are in neither sum (nnU-Net's ignore label): CE is the mean over
    the other voxels (0 when there are none), and their probabilities and labels are left out of every Dice sum.
    """
    z = logits.float()
    B, C = z.shape[:2]
    y = target.long()
    keep = None
    if ignore_index is not None:
        keep = (y != ignore_index).unsqueeze(1).float()  # (B, 1, *spatial)
        y = torch.where(y == ignore_index, torch.zeros_like(y), y)
    if sigmoid:
        g = y.unsqueeze(1).float() if C == 1 else F.one_hot(y, C).movedim(-1, 1).float()
        ce_each = F.binary_cross_entropy_with_logits(z, g, reduction="none")
        p = torch.sigmoid(z)
    else:
        g = F.one_hot(y, C).movedim(-1, 1).float()
        ce_each = F.cross_entropy(z, y, reduction="none").unsqueeze(1)
        p = torch.softmax(z, dim=1)
    if keep is None:
        ce = ce_each.mean()
    else:
        n = keep.sum() * ce_each.shape[1]
        ce = torch.where(n > 0, (ce_each * keep).sum() / n.clamp_min(1.0), torch.zeros_like(n))
        p, g = p * keep, g * keep
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
                                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, upsample: str = "linear",
                                  ignore_index=None, return_per_map: bool = False):
    """Eager ``sum_t w_t (ce_weight CE_t + dice_weight Dice_t)`` over the base and mutant maps.

    Same arguments as :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`; returns the fp32
    scalar loss (and the per-map losses ``ce_weight CE_t + dice_weight Dice_t`` when asked).
    """
    base = upsample_maps(logits, target.shape[1:], upsample)
    maps = mix_maps(base, ops, concat_weight, concat_bias, attn_weight, attn_bias)
    w = transform_weights(raw_weights.float(), weight_mode)
    per_map = []
    for z in maps:
        ce, dice = dice_ce_terms(z, target, sigmoid=sigmoid, squared=squared, batch=batch,
                                 include_background=include_background, smooth_nr=smooth_nr,
                                 smooth_dr=smooth_dr, ignore_index=ignore_index)
        per_map.append(ce_weight * ce + dice_weight * dice)
    per_map = torch.stack(per_map)
    loss = (w * per_map).sum()
    return (loss, per_map) if return_per_map else loss


def count_bad_inputs(maps: Sequence[torch.Tensor], target: torch.Tensor, num_classes: int,
                     sigmoid: bool, ignore_index=None) -> torch.Tensor:
    """``(M + 1,)`` fp32: NaN/Inf count of each map, then the count of labels outside ``[0, num_classes)``
    (``[0, 1]`` for a single sigmoid channel) other than ``ignore_index``, as the kernels count them in pass 1."""
    hi = 2 if (sigmoid and num_classes == 1) else num_classes
    out = (target < 0) | (target >= hi)
    if ignore_index is not None:
        out = out & (target != ignore_index)
    counts = [(~torch.isfinite(x)).sum() for x in maps] + [out.sum()]
    return torch.stack(counts).float()


# the loss options both registered ops take, in their schema order
LOSS_OPTIONS = ("weight_mode", "ce_weight", "dice_weight", "sigmoid", "squared", "batch", "include_background",
                "smooth_nr", "smooth_dr", "upsample", "ignore_index")


def _grad(fn, inputs, grad_out=None):
    """``(fn(*inputs), d fn / d inputs)`` (vector-Jacobian product with ``grad_out``, default 1) by plain autograd on
    detached copies of ``inputs``. A registered op's body runs below the op's own autograd (grad mode off,
    the autograd dispatch keys excluded): both are switched back on here, for this computation only. (Not
    ``torch.func.vjp``: inside a compiled graph's runtime the functorch keys are excluded as well, and it
    fails with "Cannot access data pointer of Tensor that doesn't have storage".)"""
    leaves = [x.detach().requires_grad_() for x in inputs]
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_outputs=grad_out, allow_unused=True)
    return out.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def _loss_options(cfg: dict) -> dict:
    return {k: cfg[k] for k in LOSS_OPTIONS}


def mll_forward_reference(maps, target, raw_weights, ops, cw, cb, aw, ab, **cfg):
    """The registered forward op on the reference path: ``(res, coef)`` in the kernels' layouts
    (:mod:`.layout`). ``maps`` at their own resolutions (upsampled here, ``F.interpolate``). ``coef`` (the
    Dice chain coefficients of the Triton backward) is zeros: the reference backward recomputes the forward
    instead."""
    from .layout import ResultVector

    M, T = len(maps), raw_weights.numel()
    B, C = maps[0].shape[:2]
    result = ResultVector(T, M)
    base = mix_maps(upsample_maps(maps, target.shape[1:], cfg["upsample"]), ops, cw, cb, aw, ab)
    terms = [dice_ce_terms(z, target, sigmoid=cfg["sigmoid"], squared=cfg["squared"], batch=cfg["batch"],
                           include_background=cfg["include_background"], smooth_nr=cfg["smooth_nr"],
                           smooth_dr=cfg["smooth_dr"], ignore_index=cfg["ignore_index"]) for z in base]
    ce = torch.stack([t[0] for t in terms])
    dice = torch.stack([t[1] for t in terms])
    per_map = cfg["ce_weight"] * ce + cfg["dice_weight"] * dice
    # d loss / d raw = J_w^T per_map
    w, (dw,) = _grad(lambda raw: transform_weights(raw, cfg["weight_mode"]), [raw_weights.float()], per_map)
    loss = (w * per_map).sum()
    n_ce = float(target.numel() * (C if cfg["sigmoid"] else 1))
    if cfg["ignore_index"] is not None:  # a device tensor: no host read
        n_ce = ((target != cfg["ignore_index"]).sum() * (C if cfg["sigmoid"] else 1)).float().clamp_min(1.0)
    ce_scale = w.detach() * cfg["ce_weight"] / n_ce  # with nothing to score, CE and its gradient are 0
    res = torch.cat([loss.detach().reshape(1), per_map, ce, dice, dw, ce_scale,
                     count_bad_inputs(maps, target, C, cfg["sigmoid"], cfg["ignore_index"])]).float()
    assert res.numel() == result.size
    coef = torch.zeros(1 if cfg["batch"] else B, 2, T, C, dtype=torch.float32, device=maps[0].device)
    return res, coef


def mll_backward_reference(grad_out, maps, target, raw_weights, ops, cw, cb, aw, ab, **cfg):
    """The registered backward op on the reference path: recompute the eager loss and differentiate it.
    Returns ``(grads of the maps, grad raw_weights (T,) fp32, flat parameter gradient)`` (:mod:`.layout`)."""
    from .layout import ParamGradLayout

    M, C = len(maps), maps[0].shape[1]
    present = [i for i, p in enumerate((cw, cb, aw, ab)) if p is not None]

    M_ = len(maps)

    def loss_of(*leaves):
        params = [None] * 4
        for i, p in zip(present, leaves[M_ + 1:]):
            params[i] = p
        return multi_logit_dice_ce_reference(list(leaves[:M_]), target, leaves[M_], ops=ops, concat_weight=params[0],
                                             concat_bias=params[1], attn_weight=params[2], attn_bias=params[3],
                                             **_loss_options(cfg))

    _loss, grads = _grad(loss_of, list(maps) + [raw_weights.float()] + [(cw, cb, aw, ab)[i] for i in present],
                         grad_out.reshape(()).float())
    g_maps, g_raw, g_present = grads[:M_], grads[M_], grads[M_ + 1:]
    layout = ParamGradLayout(M, C)
    flat = torch.zeros(layout.size, dtype=torch.float32, device=maps[0].device)
    views = layout.split(flat)
    for i, g in zip(present, g_present):
        views[i].copy_(g.reshape(views[i].shape))
    return list(g_maps), g_raw.float(), flat
