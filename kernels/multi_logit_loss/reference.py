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


ACTIVATIONS = ("softmax", "sigmoid", "none")
REDUCTIONS = ("mean", "sum", "none")


def binary_labels(num_classes: int, activation: str) -> bool:
    """Integer labels of a single channel that is not softmaxed are the 0/1 target (MONAI's convention);
    otherwise a label is a class index."""
    return num_classes == 1 and activation != "softmax"


def dice_ce_terms(logits: torch.Tensor, target: torch.Tensor, *, activation: str = "softmax", ce_bce: bool = False,
                  squared: bool = True, batch: bool = True, include_background: bool = True,
                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, ignore_index=None, class_weights=None,
                  label_smoothing: float = 0.0, soft_label: bool = False, jaccard: bool = False,
                  reduction: str = "mean"):
    """``(CE, Dice, Dice terms)`` of one map, fp32, with torch's own losses for CE (the oracle of the kernels).

    ``target``: integer labels ``(B, *spatial)``, or dense float targets ``(B, C, *spatial)`` (one-hot or soft).
    Dice probabilities: ``activation`` "softmax" / "sigmoid" / "none" (the logits themselves). CE: softmax
    cross-entropy on the logits (``F.cross_entropy`` with the class weights ``class_weights[0]`` and
    ``label_smoothing``), or with ``ce_bce`` BCE-with-logits per channel (``pos_weight = class_weights[0]``).
    Integer labels of a single non-softmax channel are its 0/1 target; otherwise one-hot class indices.
    Dice per (b?, c): ``1 - (2 I + smooth_nr) / (P + G + smooth_dr)`` (``jaccard``: denominator ``2 (P + G - I)``)
    with ``P = sum p^2`` (squared) or ``sum p``; ``soft_label`` (not squared): MONAI's soft-label form
    ``I = sum (|p| + |g| - |p - g|) / 2``, ``P = sum |p|``, ``G = sum |g|``. Each class's Dice times
    ``class_weights[1]``; "mean" over the included classes (and samples when ``batch`` is False), "sum" their
    sum. The Dice terms: ``(B or 1, C)`` weighted per-class Dice, zero for an excluded class.
    ``ignore_index``: voxels with that label are in neither sum (nnU-Net's ignore label): CE is the mean over
    the other voxels (0 when there are none), and their probabilities and labels are left out of every Dice sum.
    """
    z = logits.float()
    B, C = z.shape[:2]
    dense = target.is_floating_point()
    keep = None
    cw = None if class_weights is None else class_weights.float()
    if dense:
        g = target.float()
        y = None
    else:
        y = target.long()
        if ignore_index is not None:
            keep = (y != ignore_index).unsqueeze(1).float()  # (B, 1, *spatial)
            y = torch.where(y == ignore_index, torch.zeros_like(y), y)
        if binary_labels(C, activation):
            g = y.unsqueeze(1).float()
        else:
            g = F.one_hot(y, C).movedim(-1, 1).float()
    if ce_bce:
        pw = None if cw is None else cw[0].reshape(C, *([1] * (z.dim() - 2)))
        ce_sum_each = F.binary_cross_entropy_with_logits(z, g, pos_weight=pw, reduction="none")
        if keep is not None:
            ce_sum_each = ce_sum_each * keep
        ce_sum = ce_sum_each.sum()
        n = (keep.sum() if keep is not None else torch.tensor(float(g[:, :1].numel()), device=z.device)) * C
    elif dense:
        ce_sum = F.cross_entropy(z, g, weight=None if cw is None else cw[0], reduction="sum",
                                 label_smoothing=label_smoothing)
        n = torch.tensor(float(g[:, :1].numel()), device=z.device)
    else:
        yy = y if keep is None else torch.where(keep[:, 0] > 0, y, torch.full_like(y, -100))
        ce_sum = F.cross_entropy(z, yy, weight=None if cw is None else cw[0], reduction="sum", ignore_index=-100,
                                 label_smoothing=label_smoothing)
        counted = torch.ones_like(y, dtype=torch.float32) if keep is None else keep[:, 0]
        if cw is not None:
            counted = counted * cw[0][y]
        n = counted.sum()
    if reduction == "mean":
        ce = torch.where(n > 0, ce_sum / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(ce_sum))
    else:
        ce = ce_sum
    if activation == "softmax":
        p = torch.softmax(z, dim=1)
    elif activation == "sigmoid":
        p = torch.sigmoid(z)
    else:
        p = z
    if keep is not None:
        p, g = p * keep, g * keep
    first = 1 if (not include_background and C > 1) else 0
    p, g = p[:, first:], g[:, first:]
    dims = [0] + list(range(2, z.dim())) if batch else list(range(2, z.dim()))
    if soft_label and not squared:
        inter = ((p.abs() + g.abs() - (p - g).abs()) / 2).sum(dims)
        pp, gg = p.abs().sum(dims), g.abs().sum(dims)
    else:
        inter = (p * g).sum(dims)
        pp = (p * p).sum(dims) if squared else p.sum(dims)
        gg = (g * g).sum(dims) if squared else g.sum(dims)
    den = 2.0 * (pp + gg - inter) if jaccard else pp + gg
    f = 1.0 - (2.0 * inter + smooth_nr) / (den + smooth_dr)  # (B, C') or (C',)
    if cw is not None:
        f = f * cw[1][first:]
    dice = f.mean() if reduction == "mean" else f.sum()
    terms = f.reshape(1 if batch else B, C - first)
    if first:
        terms = torch.cat([torch.zeros_like(terms[:, :1]), terms], dim=1)
    return ce, dice, terms


def resolve_activation(sigmoid: bool = False, activation=None, ce_bce=None):
    """``(activation, ce_bce)``: ``activation`` defaults to "sigmoid" / "softmax" by ``sigmoid``; the CE is BCE
    (``ce_bce``) by default exactly when the Dice activation is the sigmoid."""
    activation = activation or ("sigmoid" if sigmoid else "softmax")
    return activation, (activation == "sigmoid") if ce_bce is None else bool(ce_bce)


def multi_logit_dice_ce_reference(logits: Sequence[torch.Tensor], target: torch.Tensor,
                                  raw_weights: torch.Tensor, *, ops: Sequence[str] = (),
                                  concat_weight=None, concat_bias=None, attn_weight=None, attn_bias=None,
                                  weight_mode: str = "softplus", ce_weight: float = 0.3,
                                  dice_weight: float = 0.7, sigmoid: bool = False, squared: bool = True,
                                  batch: bool = True, include_background: bool = True,
                                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, upsample: str = "linear",
                                  ignore_index=None, activation=None, ce_bce=None, class_weights=None,
                                  label_smoothing: float = 0.0, soft_label: bool = False, jaccard: bool = False,
                                  reduction: str = "mean", return_per_map: bool = False):
    """Eager ``sum_t w_t (ce_weight CE_t + dice_weight Dice_t)`` over the base and mutant maps.

    Same arguments as :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`; returns the fp32
    scalar loss (and the per-map losses ``ce_weight CE_t + dice_weight Dice_t`` when asked); with
    ``reduction="none"`` the ``(T, B or 1, C)`` weighted per-class Dice terms instead of the loss.
    """
    activation, ce_bce = resolve_activation(sigmoid, activation, ce_bce)
    ce, dice, terms = _supervised_map_terms(
        logits, target, ops, (concat_weight, concat_bias, attn_weight, attn_bias), upsample, class_weights,
        activation=activation, ce_bce=ce_bce, squared=squared, batch=batch, include_background=include_background,
        smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index, label_smoothing=label_smoothing,
        soft_label=soft_label, jaccard=jaccard, reduction=reduction)
    per_map = ce_weight * ce + dice_weight * dice
    loss = terms if reduction == "none" else (transform_weights(raw_weights.float(), weight_mode) * per_map).sum()
    return (loss, per_map) if return_per_map else loss


def _supervised_map_terms(logits, target, ops, params, upsample, class_weights, **term_options):
    """``(CE (T,), Dice (T,), Dice terms (T, B or 1, C))`` of every supervised map: the base maps upsampled to the
    target's size, the mutants mixed from them, each scored by :func:`dice_ce_terms` (``term_options``)."""
    base = upsample_maps(logits, target.shape[-(logits[0].dim() - 2):], upsample)
    terms = [dice_ce_terms(z, target, class_weights=class_weights, **term_options)
             for z in mix_maps(base, ops, *params)]
    return tuple(torch.stack([t[i] for t in terms]) for i in range(3))


def count_bad_inputs(maps: Sequence[torch.Tensor], target: torch.Tensor, num_classes: int,
                     activation: str, ignore_index=None) -> torch.Tensor:
    """``(M + 1,)`` fp32: NaN/Inf count of each map, then the count of labels outside ``[0, num_classes)``
    (``[0, 1]`` for a single non-softmax channel) other than ``ignore_index``, as the kernels count them in
    pass 1 (none for dense float targets)."""
    counts = [(~torch.isfinite(x)).sum() for x in maps]
    if target.is_floating_point():
        return torch.stack(counts + [counts[0] * 0]).float()
    hi = 2 if binary_labels(num_classes, activation) else num_classes
    out = (target < 0) | (target >= hi)
    if ignore_index is not None:
        out = out & (target != ignore_index)
    return torch.stack(counts + [out.sum()]).float()


# the loss options both registered ops take, in their schema order
LOSS_OPTIONS = ("weight_mode", "ce_weight", "dice_weight", "activation", "ce_bce", "squared", "batch",
                "include_background", "smooth_nr", "smooth_dr", "upsample", "ignore_index", "label_smoothing",
                "soft_label", "jaccard", "reduction")
# the ones that weigh and resample the maps rather than score one (not dice_ce_terms' options)
MAP_WEIGHTING_OPTIONS = ("weight_mode", "ce_weight", "dice_weight", "upsample")


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


def loss_options(args: dict) -> dict:
    """The loss options (``LOSS_OPTIONS``, the registered ops' argument names) out of ``args`` (a config, or a
    registered op's arguments)."""
    return {k: args[k] for k in LOSS_OPTIONS}


def mll_forward_reference(maps, target, raw_weights, ops, cw, cb, aw, ab, class_weights=None, **cfg):
    """The registered forward op on the reference path: ``(res, coef)`` in the kernels' layouts
    (:mod:`.layout`). ``maps`` at their own resolutions (upsampled here, ``F.interpolate``). ``coef``'s Dice
    chain planes (read by the Triton backward only) are zeros: the reference backward recomputes the forward
    instead; its terms plane (``reduction="none"``) holds the weighted per-class Dice."""
    from .layout import ResultVector, coef_shape

    M, T = len(maps), raw_weights.numel()
    B, C = maps[0].shape[:2]
    result = ResultVector(T, M)
    ce, dice, terms = _supervised_map_terms(maps, target, ops, (cw, cb, aw, ab), cfg["upsample"], class_weights,
                                            **{k: v for k, v in cfg.items() if k not in MAP_WEIGHTING_OPTIONS})
    per_map = cfg["ce_weight"] * ce + cfg["dice_weight"] * dice
    # d loss / d raw = J_w^T per_map
    w, (dw,) = _grad(lambda raw: transform_weights(raw, cfg["weight_mode"]), [raw_weights.float()], per_map)
    loss = (w * per_map).sum()
    ce_scale = torch.zeros_like(per_map)  # read by the Triton backward only
    res = torch.cat([loss.detach().reshape(1), per_map, ce, dice, dw, ce_scale,
                     count_bad_inputs(maps, target, C, cfg["activation"], cfg["ignore_index"])]).float()
    assert res.numel() == result.size
    coef = torch.zeros(coef_shape(B, T, C, cfg["batch"], cfg["reduction"]), dtype=torch.float32,
                       device=maps[0].device)
    if cfg["reduction"] == "none":
        coef[:, 2] = terms.transpose(0, 1)
    return res, coef


def mll_backward_reference(grad_out, maps, target, raw_weights, ops, cw, cb, aw, ab, class_weights=None, **cfg):
    """The registered backward op on the reference path: recompute the eager loss and differentiate it
    (``grad_out``: ``(1,)``, or with ``reduction="none"`` the ``(B or 1, T, C)`` gradient of the Dice terms).
    Returns ``(grads of the maps, grad raw_weights (T,) fp32, flat parameter gradient)`` (:mod:`.layout`)."""
    from .layout import ParamGradLayout

    M, C = len(maps), maps[0].shape[1]
    present = [i for i, p in enumerate((cw, cb, aw, ab)) if p is not None]
    none = cfg["reduction"] == "none"

    def loss_of(*leaves):
        params = [None] * 4
        for i, p in zip(present, leaves[M + 1:]):
            params[i] = p
        out = multi_logit_dice_ce_reference(list(leaves[:M]), target, leaves[M], ops=ops, concat_weight=params[0],
                                            concat_bias=params[1], attn_weight=params[2], attn_bias=params[3],
                                            class_weights=class_weights, **loss_options(cfg))
        return (out * grad_out.float().transpose(0, 1)).sum() if none else out

    _loss, grads = _grad(loss_of, list(maps) + [raw_weights.float()] + [(cw, cb, aw, ab)[i] for i in present],
                         None if none else grad_out.reshape(()).float())
    g_maps, g_raw, g_present = grads[:M], grads[M], grads[M + 1:]
    layout = ParamGradLayout(M, C)
    flat = torch.zeros(layout.size, dtype=torch.float32, device=maps[0].device)
    views = layout.split(flat)
    for i, g in zip(present, g_present):
        views[i].copy_(g.reshape(views[i].shape))
    return list(g_maps), g_raw.float(), flat
