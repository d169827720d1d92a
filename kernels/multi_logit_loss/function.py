"""Functional API, input guard, autograd Function and registered ops of the fused multi-logit loss.

Data path (both backends): :func:`multi_logit_dice_ce` -> :func:`_guard` (every argument check, once)
-> :class:`MultiLogitDiceCEFunction` (maps at their own resolutions: the kernels upsample coarse maps in
registers and write their gradients at their own resolution; the reference uses ``F.interpolate``)
-> ``torch.ops.segfuse.mll_fwd`` / ``mll_bwd`` (custom ops with fake implementations, so
``torch.compile`` traces through without graph breaks) -> dispatch: Triton launchers
(:mod:`.triton`) or the eager reference (:mod:`.reference`). The Function takes the backend from
:func:`segfuse.kernels.dispatch.backend_for` once, in the forward, and hands it to both ops: the Triton backward
reads buffers only the Triton forward writes.
Value checks (labels in range, finite logits) are counted in-pass by the kernels and by torch ops on the
reference path; the counts stay on the device. ``validate=True`` reads them back and raises (one small
device->host read per call) with the same function and message on both paths; ``"async"`` checks them
with ``torch._assert_async`` on CUDA (no host sync; the error surfaces at the next synchronisation) and
not at all on other devices; ``False`` skips them. The loss modules default to ``"first"``: the first
call of a module validates like ``True``, later calls like ``"async"`` (:func:`next_validate`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..dispatch import backend_for
from ..utils import (FLOAT_DTYPES, INT_DTYPES, InputShapeError, InputTypeError, InputValueError, check_same,
                     check_shape, check_tensor, look_up_option)
from . import reference
from .geometry import UPSAMPLE_MODES
from .layout import ParamGradLayout, ResultVector, coef_shape
from .reference import (ACTIVATIONS, LOSS_OPTIONS, OPS, REDUCTIONS, WEIGHT_MODES, attn_rows, concat_rows,
                        loss_options, num_supervised_maps, resolve_activation, subsets)


def raise_bad_inputs(bad: Sequence[float], num_classes: int, activation: str, ignore_index=None) -> None:
    """Raise for the first nonzero count of ``bad`` = [NaN/Inf count per map ..., bad label count]."""
    if bad[-1] > 0:
        hi = _label_hi(num_classes, activation)
        other = "" if ignore_index is None else f" other than ignore_index={ignore_index}"
        raise InputValueError(f"target holds {int(bad[-1])} labels outside [0, {hi}]{other} (negative or >= "
                              f"num_classes={num_classes})")
    for i, n in enumerate(bad[:-1]):
        if n > 0:
            raise InputValueError(f"logits[{i}] contains {int(n)} NaN or Inf values")


def _label_hi(num_classes: int, activation: str) -> int:
    return 1 if reference.binary_labels(num_classes, activation) else num_classes - 1


def _check_bad_inputs(bad: torch.Tensor, num_classes: int, activation: str, mode: str, ignore_index=None) -> None:
    """Act on the ``(M + 1,)`` bad-input counts (device tensor) as ``mode`` says: "sync" reads them back and
    raises (:func:`raise_bad_inputs`); "async" queues a device-side assertion on CUDA (no host sync) and does
    nothing elsewhere; "off" nothing."""
    if mode == "sync":
        raise_bad_inputs(bad.tolist(), num_classes, activation, ignore_index)
    elif mode == "async" and bad.is_cuda:
        torch._assert_async(bad.sum() == 0, ASYNC_MESSAGE.format(hi=_label_hi(num_classes, activation)))


ASYNC_MESSAGE = ("multi_logit_dice_ce: the target holds labels outside [0, {hi}] or a logit map holds NaN/Inf "
                 "values (asynchronous check; validate=True raises with the map and the count)")
VALIDATE_OPTIONS = (True, False, "async")
MODULE_VALIDATE_OPTIONS = (True, False, "async", "first")
_VALIDATE_MODE = {True: "sync", False: "off", "async": "async"}


def check_validate(value, module: bool = False):
    """``value`` if it is a valid ``validate`` option (``MODULE_VALIDATE_OPTIONS`` for the loss modules)."""
    allowed = MODULE_VALIDATE_OPTIONS if module else VALIDATE_OPTIONS
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise InputValueError(f"validate must be one of {allowed}, got {value!r}"
                              + ("" if module else " ('first' is an option of the loss modules)"))
    return value


def next_validate(setting, done: bool):
    """``(validate for this call, done after it)`` of a loss module whose option is ``setting`` and that has
    (``done``) or has not validated yet: "first" validates on the first call (``True``: raises with the
    details) and then checks asynchronously (``"async"``: no host sync); other settings pass through."""
    if setting == "first":
        return (True if not done else "async"), True
    return setting, done


def _ops_tuple(ops: str) -> tuple:
    return tuple(o for o in ops.split(",") if o)


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("segfuse::mll_fwd", mutates_args=())
def _mll_fwd_op(maps: List[torch.Tensor], target: torch.Tensor, raw_weights: torch.Tensor,
                concat_weight: Optional[torch.Tensor], concat_bias: Optional[torch.Tensor],
                attn_weight: Optional[torch.Tensor], attn_bias: Optional[torch.Tensor],
                class_weights: Optional[torch.Tensor], ops: str, weight_mode: str, ce_weight: float,
                dice_weight: float, activation: str, ce_bce: bool, squared: bool, batch: bool,
                include_background: bool, smooth_nr: float, smooth_dr: float, upsample: str,
                ignore_index: Optional[int], label_smoothing: float, soft_label: bool, jaccard: bool, reduction: str,
                validate: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = loss_options(locals())
    params = (concat_weight, concat_bias, attn_weight, attn_bias)
    C = maps[0].shape[1]
    if backend == "triton":
        from .triton import mll_forward

        res, coef = mll_forward(maps, target, raw_weights, _ops_tuple(ops), *params, class_weights, **cfg)
        _check_bad_inputs(ResultVector(raw_weights.numel(), len(maps)).field(res, "bad"), C, activation, validate,
                          ignore_index)
        return res, coef
    if validate == "sync":  # raise before computing anything (the counts are computed again in res)
        _check_bad_inputs(reference.count_bad_inputs(maps, target, C, activation, ignore_index), C, activation,
                          validate, ignore_index)
    res, coef = reference.mll_forward_reference(maps, target, raw_weights, _ops_tuple(ops), *params, class_weights,
                                                **cfg)
    if validate == "async":
        _check_bad_inputs(ResultVector(raw_weights.numel(), len(maps)).field(res, "bad"), C, activation, validate,
                          ignore_index)
    return res, coef


@_mll_fwd_op.register_fake
def _(maps, target, raw_weights, concat_weight, concat_bias, attn_weight, attn_bias, class_weights, ops, weight_mode,
      ce_weight, dice_weight, activation, ce_bce, squared, batch, include_background, smooth_nr, smooth_dr, upsample,
      ignore_index, label_smoothing, soft_label, jaccard, reduction, validate, backend):
    T, (B, C) = raw_weights.numel(), maps[0].shape[:2]
    res = maps[0].new_empty(ResultVector(T, len(maps)).size, dtype=torch.float32)
    coef = maps[0].new_empty(coef_shape(B, T, C, batch, reduction), dtype=torch.float32)
    return res, coef


@torch.library.custom_op("segfuse::mll_bwd", mutates_args=())
def _mll_bwd_op(grad_out: torch.Tensor, maps: List[torch.Tensor], target: torch.Tensor, raw_weights: torch.Tensor,
                concat_weight: Optional[torch.Tensor], concat_bias: Optional[torch.Tensor],
                attn_weight: Optional[torch.Tensor], attn_bias: Optional[torch.Tensor],
                class_weights: Optional[torch.Tensor], res: torch.Tensor, coef: torch.Tensor, ops: str,
                weight_mode: str, ce_weight: float, dice_weight: float, activation: str, ce_bce: bool, squared: bool,
                batch: bool, include_background: bool, smooth_nr: float, smooth_dr: float, upsample: str,
                ignore_index: Optional[int], label_smoothing: float, soft_label: bool, jaccard: bool, reduction: str,
                concat_grad: bool, backend: str) -> tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    cfg = loss_options(locals())
    params = (concat_weight, concat_bias, attn_weight, attn_bias)
    if backend == "triton":
        from .triton import mll_backward

        return mll_backward(grad_out, maps, target, raw_weights, _ops_tuple(ops), *params, res, coef, class_weights,
                            concat_grad=concat_grad, **cfg)
    return reference.mll_backward_reference(grad_out, maps, target, raw_weights, _ops_tuple(ops), *params,
                                            class_weights, **cfg)


@_mll_bwd_op.register_fake
def _(grad_out, maps, target, raw_weights, concat_weight, concat_bias, attn_weight, attn_bias, class_weights, res,
      coef, ops, weight_mode, ce_weight, dice_weight, activation, ce_bce, squared, batch, include_background,
      smooth_nr, smooth_dr, upsample, ignore_index, label_smoothing, soft_label, jaccard, reduction, concat_grad,
      backend):
    size = ParamGradLayout(len(maps), maps[0].shape[1]).size
    return ([torch.empty_like(x) for x in maps], raw_weights.new_empty(raw_weights.shape, dtype=torch.float32),
            maps[0].new_empty(size, dtype=torch.float32))


class MultiLogitDiceCEFunction(torch.autograd.Function):
    """Fused loss; returns ``(loss, per_map_losses, dice_terms)``: the per-map losses are not differentiable;
    the ``(B or 1, T, C)`` weighted per-class Dice terms are the differentiable output with
    ``reduction="none"`` (then the loss output is not); otherwise the third output is a non-differentiable
    placeholder (the chain coefficients) that callers drop."""

    @staticmethod
    def forward(ctx, target, raw_weights, cw, cb, aw, ab, class_weights, cfg, *maps):
        ctx.backend = backend_for(maps[0].device)
        res, coef = torch.ops.segfuse.mll_fwd(list(maps), target, raw_weights, cw, cb, aw, ab, class_weights,
                                              cfg["ops"], *(cfg[k] for k in LOSS_OPTIONS), cfg["validate"],
                                              ctx.backend)
        ctx.save_for_backward(target, raw_weights, cw, cb, aw, ab, class_weights, res, coef, *maps)
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)  # no zero-filled grad for an output not used
        per_map = ResultVector(raw_weights.numel(), len(maps)).field(res, "per_map")
        ctx.mark_non_differentiable(per_map)
        if cfg["reduction"] == "none":
            terms = coef[:, 2].clone()
            loss = res[0].clone()
            ctx.mark_non_differentiable(loss)
        else:  # no per-class output: coef stands in (non-differentiable, unused; no extra op on the step)
            terms = coef
            loss = res[0]
            ctx.mark_non_differentiable(terms)
        return loss, per_map, terms

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_map, grad_terms):
        target, raw_weights, cw, cb, aw, ab, class_weights, res, coef, *maps = ctx.saved_tensors
        cfg = ctx.cfg
        none = cfg["reduction"] == "none"
        upstream = grad_terms if none else grad_loss
        if upstream is None:
            return (None,) * (8 + len(maps))
        concat_grad = cw is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        g_maps, g_raw, g_params = torch.ops.segfuse.mll_bwd(
            upstream.float().contiguous() if none else upstream.reshape(1).float().contiguous(), maps, target,
            raw_weights, cw, cb, aw, ab, class_weights, res, coef, cfg["ops"], *(cfg[k] for k in LOSS_OPTIONS),
            concat_grad, ctx.backend)
        g_cw, g_cb, g_aw, g_ab = ParamGradLayout(len(maps), maps[0].shape[1]).split(g_params)
        return (None, None if none else g_raw.to(raw_weights.dtype), g_cw if concat_grad else None,
                g_cb if concat_grad else None, g_aw if aw is not None else None, g_ab if aw is not None else None,
                None, None, *g_maps)


# ----------------------------------------------------------------------------- input guard
def _guard_maps(logits) -> list:
    if isinstance(logits, torch.Tensor):
        check_tensor("logits", logits, ndim=(5, 6), layout_hint="stacked (M, B, C, *spatial)")
        maps = list(logits.unbind(0))
    elif isinstance(logits, (list, tuple)) and len(logits):
        maps = list(logits)
    else:
        raise InputTypeError("logits must be a non-empty list of (B, C, *spatial) tensors or a stacked "
                             "(M, B, C, *spatial) tensor")
    for i, x in enumerate(maps):
        check_tensor(f"logits[{i}]", x, ndim=(4, 5), layout_hint="(B, C, H, W) or (B, C, D, H, W)")
        if i:
            check_same(f"logits[{i}]", x, "logits[0]", maps[0])
            if x.dim() != maps[0].dim() or x.shape[:2] != maps[0].shape[:2]:
                raise InputShapeError(f"logits[{i}] has shape {tuple(x.shape)}; every map must share rank, batch "
                                      f"and classes with logits[0] {tuple(maps[0].shape)}")
        if x.numel() == 0:
            raise InputShapeError(f"logits[{i}] is empty (shape {tuple(x.shape)}); the loss needs at least one "
                                  "sample, class and voxel")
    return maps


def _guard_target(target, maps) -> torch.Tensor:
    check_tensor("target", target, dtypes=INT_DTYPES + FLOAT_DTYPES)
    d = maps[0].dim() - 2
    if target.is_floating_point():  # dense targets: one-hot or soft, one channel per class, at the label size
        B, C = maps[0].shape[:2]
        if target.dim() != d + 2 or target.shape[:2] != (B, C):
            raise InputShapeError(f"a float target holds one-hot / soft targets and must be (B, C, *spatial) = "
                                  f"({B}, {C}, ...) for logits of shape {tuple(maps[0].shape)}, got shape "
                                  f"{tuple(target.shape)} (integer labels: an integer tensor (B, *spatial))")
        check_same("target", target, "logits[0]", maps[0], dtype=False)
        _check_map_sizes(maps, tuple(target.shape[2:]))
        return target
    if target.dim() == d + 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != d + 1:
        raise InputShapeError(f"target must be (B, *spatial) or (B, 1, *spatial) labels for {d}D logits, "
                              f"got shape {tuple(target.shape)}")
    if target.shape[0] != maps[0].shape[0]:
        raise InputShapeError(f"target batch {target.shape[0]} != logits batch {maps[0].shape[0]}")
    check_same("target", target, "logits[0]", maps[0], dtype=False)
    _check_map_sizes(maps, tuple(target.shape[1:]))
    return target


def _check_map_sizes(maps, size: tuple) -> None:
    for i, x in enumerate(maps):
        for ax, (n, s) in enumerate(zip(size, x.shape[2:])):
            if s > n or n % s:
                raise InputShapeError(f"logits[{i}] spatial size {tuple(x.shape[2:])} is not the target size "
                                      f"{size} divided by an integer factor (axis {ax}: {n} / {s})")


def _guard_param(name, t, shape, ref):
    if t is None:
        raise InputValueError(f"{name} is required by the chosen ops; expected shape {tuple(shape)}")
    check_tensor(name, t, dtypes=FLOAT_DTYPES)
    check_shape(name, t, shape)
    check_same(name, t, "logits[0]", ref, dtype=False)
    return t.float().contiguous()


def _guard(logits, target, raw_weights, ops, params, weight_mode, ce_weight, dice_weight):
    """Every check of the public arguments, once; returns them normalised for the Function."""
    maps = _guard_maps(logits)
    target = _guard_target(target, maps)
    M, C = len(maps), maps[0].shape[1]
    ops = tuple(ops)
    for op in ops:
        look_up_option("ops", op, OPS)
    if len(set(ops)) != len(ops):
        raise InputValueError(f"ops must not repeat an operator, got {ops}")
    if ops and M < 2:
        raise InputValueError(f"mixing ops need at least 2 logit maps, got {M}")
    weight_mode = look_up_option("weight_mode", weight_mode, WEIGHT_MODES)
    T = num_supervised_maps(M, ops)
    check_tensor("raw_weights", raw_weights)
    if raw_weights.numel() != T or raw_weights.dim() != 1:
        raise InputShapeError(f"raw_weights must have shape ({T},): {M} logit maps + {len(ops)} ops x "
                              f"{len(subsets(M)) if ops else 0} subsets; got {tuple(raw_weights.shape)} "
                              f"(wrong number of logit maps or weights?)")
    check_same("raw_weights", raw_weights, "logits[0]", maps[0], dtype=False)
    cw, cb, aw, ab = params
    if "concat" in ops:
        cw = _guard_param("concat_weight", cw, (concat_rows(M), C, C), maps[0])
        cb = _guard_param("concat_bias", cb, (len(subsets(M)), C), maps[0])
    else:
        cw = cb = None
    if "attention" in ops:
        aw = _guard_param("attn_weight", aw, (attn_rows(M), C), maps[0])
        ab = _guard_param("attn_bias", ab, (attn_rows(M),), maps[0])
    else:
        aw = ab = None
    if dice_weight < 0 or ce_weight < 0:
        raise InputValueError(f"ce_weight and dice_weight must be >= 0, got {ce_weight}, {dice_weight}")
    return maps, target, ops, weight_mode, (cw, cb, aw, ab)


def _guard_ignore_index(ignore_index, target: torch.Tensor):
    """``ignore_index`` as an int (or None): a label value ``target``'s dtype can hold; outside the classes
    (nnU-Net's ignore label, the largest label value) or one of them (MONAI's ``DiceLoss(ignore_index=c)``:
    that class's voxels then count nowhere, and its Dice is 0)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise InputTypeError(f"ignore_index must be an int label value or None, got {type(ignore_index).__name__}")
    if target.is_floating_point():
        raise InputValueError(f"ignore_index={ignore_index} needs integer labels; the target is a float (B, C, ...) "
                              "tensor of one-hot / soft targets")
    info = torch.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        raise InputValueError(f"ignore_index={ignore_index} cannot occur in a {target.dtype} target "
                              f"(values {info.min}..{info.max})")
    return int(ignore_index)


def _guard_class_weights(class_weight, dice_class_weight, C: int, ref: torch.Tensor, check_values: bool):
    """The ``(2, C)`` fp32 class weights (row 0 CE / pos_weight, row 1 Dice; ones where one is not given), or
    None when neither is given. ``check_values``: negative values raise (a host read unless on the CPU)."""
    if class_weight is None and dice_class_weight is None:
        return None
    rows = []
    for name, w in (("class_weight", class_weight), ("dice_class_weight", dice_class_weight)):
        if w is None:
            rows.append(torch.ones(C, dtype=torch.float32, device=ref.device))
            continue
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(w, dtype=torch.float32)
        w = w.to(ref.device)
        check_tensor(name, w, dtypes=FLOAT_DTYPES + INT_DTYPES)
        if w.dim() == 0:
            w = w.expand(C)
        if tuple(w.shape) != (C,):
            raise InputShapeError(f"{name} must hold one weight per class, shape ({C},), got {tuple(w.shape)}")
        if (check_values or w.device.type == "cpu") and bool((w < 0).any()):
            raise InputValueError(f"{name} must be >= 0, got {w.tolist()}")
        rows.append(w.float())
    return torch.stack(rows).contiguous()


def _guard_voxel_options(activation, ce_bce, label_smoothing, soft_label, jaccard, reduction, ce_weight):
    activation = look_up_option("activation", activation, ACTIVATIONS)
    if activation == "softmax" and ce_bce:
        raise InputValueError("ce_bce=True (BCE-with-logits) goes with a sigmoid or no activation, not softmax")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise InputValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if label_smoothing > 0 and ce_bce:
        raise InputValueError(f"label_smoothing={label_smoothing} applies to the softmax cross-entropy only (torch's "
                              "CrossEntropyLoss); BCE-with-logits has none (as MONAI's DiceCELoss)")
    reduction = look_up_option("reduction", reduction, REDUCTIONS)
    if reduction == "none" and ce_weight != 0:
        raise InputValueError(f"reduction='none' returns the per-class Dice terms and needs ce_weight=0, got "
                              f"{ce_weight}")
    return activation, bool(ce_bce), float(label_smoothing), bool(soft_label), bool(jaccard), reduction


# ----------------------------------------------------------------------------- functional API
def multi_logit_dice_ce(logits, target: torch.Tensor, raw_weights: torch.Tensor, *, ops: Sequence[str] = (),
                        concat_weight: Optional[torch.Tensor] = None, concat_bias: Optional[torch.Tensor] = None,
                        attn_weight: Optional[torch.Tensor] = None, attn_bias: Optional[torch.Tensor] = None,
                        weight_mode: str = "softplus", ce_weight: float = 0.3, dice_weight: float = 0.7,
                        sigmoid: bool = False, squared: bool = True, batch: bool = True,
                        include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                        upsample: str = "linear", ignore_index: Optional[int] = None,
                        activation: Optional[str] = None, ce_bce: Optional[bool] = None,
                        class_weight: Optional[torch.Tensor] = None, dice_class_weight: Optional[torch.Tensor] = None,
                        label_smoothing: float = 0.0, soft_label: bool = False, jaccard: bool = False,
                        reduction: str = "mean", validate=True, return_per_map: bool = False):
    """``sum_t w_t * (ce_weight * CE_t + dice_weight * Dice_t)`` over base and mutant maps, fused.

    Args:
        logits: M maps ``(B, C, *spatial)`` (2D or 3D; fp32/fp16/bf16, all the same dtype; any M) as a list,
            coarse to fine in any order, or one stacked ``(M, B, C, *spatial)`` tensor. A map coarser than
            ``target`` by an integer factor per axis is upsampled to it (``upsample``), as
            ``F.interpolate(..., align_corners=False)`` does; the kernels read it at its own resolution,
            interpolate in registers and write its gradient at its own resolution.
        target: integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` (uint8 .. int64). Softmax: values in
            ``[0, C)``; a single sigmoid / no-activation channel: values in {0, 1}; and ``ignore_index`` where
            given. Or a float ``(B, C, *spatial)`` tensor of one-hot or soft targets (MONAI's
            ``to_onehot_y=False``), read as they are.
        raw_weights: ``(T,)`` with ``T = M + len(ops) * (2^M - 1 - M)`` supervised maps (base maps first, then
            per op every subset of size >= 2 in ``itertools.combinations`` order).
        ops: subset of ``("add", "mul", "concat", "attention")``: LoMix mutant operators.
        concat_weight / concat_bias: ``(R_c, C, C)`` / ``(n_subsets, C)`` (see :mod:`.reference`); required for
            "concat". attn_weight / attn_bias: ``(R_a, C)`` / ``(R_a,)``; required for "attention".
        weight_mode: "softplus" (``w = softplus(raw)``, LoMix), "normalized" (softplus rescaled to sum to
            ``T ln 2``) or "fixed" (``w = raw``, deep supervision with fixed weights).
        ce_weight, dice_weight: the two loss weights (LoMix 0.3 / 0.7; MONAI ``lambda_ce`` / ``lambda_dice``).
        sigmoid: False: softmax CE + softmax Dice over C classes; True: sigmoid + BCE-with-logits (C == 1 binary,
            labels 0/1; C > 1 multi-label against one-hot labels). Shorthand for ``activation``.
        activation: the Dice probabilities: "softmax", "sigmoid" or "none" (the input itself, MONAI's
            ``softmax=sigmoid=False``); default by ``sigmoid``.
        ce_bce: the CE term is BCE-with-logits per channel (True) or the softmax cross-entropy of the logits
            (False); default: BCE exactly with the sigmoid. (MONAI's DiceCELoss: BCE iff C == 1.)
        class_weight: ``(C,)`` CE class weights (torch's ``CrossEntropyLoss(weight)``: the mean is divided by the
            weights of the labels), or BCE's ``pos_weight`` per channel. dice_class_weight: ``(C,)``, each class's
            Dice times its weight (MONAI's ``DiceLoss(weight)``; the mean still divides by the class count).
        label_smoothing: softmax CE label smoothing (torch's), in [0, 1].
        soft_label: MONAI's soft-label Dice (not squared): ``I = sum (|p| + |g| - |p - g|) / 2``, ``P = sum |p|``.
        jaccard: Jaccard (IoU) loss: denominator ``2 (P + G - I)``.
        reduction: "mean" (the Dice mean over classes (and samples), CE mean), "sum" (sums) or "none" (needs
            ce_weight 0: the loss is then the per-class Dice, see Returns).
        squared: Dice denominators ``sum p^2 + sum g^2`` (True) or ``sum p + sum g``.
        batch: Dice sums over the batch (True) or per sample then averaged.
        include_background: include class 0 in the Dice mean (CE always uses every class, as MONAI).
        smooth_nr, smooth_dr: Dice smoothing of numerator / denominator.
        upsample: "linear" (bilinear / trilinear, ``align_corners=False``; LoMix, MERIT) or "nearest".
        ignore_index: a label value (nnU-Net's ignore label, outside the classes; or a class, as MONAI allows)
            whose voxels count in neither term: CE is the mean over the other voxels (0 if there are none), their probabilities and labels
            are left out of every Dice sum, and their logits get a zero gradient. None: every voxel counts.
        validate: labels in range and finite logits (counted in-pass on the Triton path). ``True``: raise
            ``ValueError`` naming the fault (one tiny device->host read per call); ``"async"``: on CUDA a
            device-side assertion (``torch._assert_async``, no host sync; fails at the next synchronisation),
            elsewhere no check; ``False``: no check. (The loss modules default to "first": ``True`` on their
            first call, then ``"async"``.)
        return_per_map: also return the ``(T,)`` per-map losses (not differentiable).
    Returns:
        fp32 scalar loss (and the per-map losses); with ``reduction="none"``, instead of the loss, the
        ``(B or 1, T, C)`` class-weighted Dice terms per (sample, map, class) (1 row with ``batch``; an excluded
        background class is 0).

    Example:
        >>> maps = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(4)]
        >>> y = torch.randint(0, 3, (2, 8, 8))
        >>> loss = multi_logit_dice_ce(maps, y, torch.zeros(48), ops=("add", "mul"))  # doctest: +SKIP
    """
    maps, target, ops, weight_mode, (cw, cb, aw, ab) = _guard(
        logits, target, raw_weights, ops, (concat_weight, concat_bias, attn_weight, attn_bias), weight_mode,
        ce_weight, dice_weight)
    upsample = look_up_option("upsample", upsample, UPSAMPLE_MODES)
    ignore_index = _guard_ignore_index(ignore_index, target)
    validate = _VALIDATE_MODE[check_validate(validate)]
    activation, ce_bce = resolve_activation(bool(sigmoid), activation, ce_bce)
    activation, ce_bce, label_smoothing, soft_label, jaccard, reduction = _guard_voxel_options(
        activation, ce_bce, label_smoothing, soft_label, jaccard, reduction, ce_weight)
    class_weights = _guard_class_weights(class_weight, dice_class_weight, maps[0].shape[1], maps[0],
                                         validate == "sync")
    maps = [x.contiguous() for x in maps]
    cfg = dict(ops=",".join(ops), weight_mode=weight_mode, ce_weight=float(ce_weight),
               dice_weight=float(dice_weight), activation=activation, ce_bce=ce_bce, squared=bool(squared),
               batch=bool(batch), include_background=bool(include_background), smooth_nr=float(smooth_nr),
               smooth_dr=float(smooth_dr), upsample=upsample, ignore_index=ignore_index,
               label_smoothing=label_smoothing, soft_label=soft_label, jaccard=jaccard, reduction=reduction,
               validate=validate)
    target = target.float() if target.is_floating_point() else target
    loss, per_map, terms = MultiLogitDiceCEFunction.apply(target.contiguous(), raw_weights.float().contiguous(),
                                                          cw, cb, aw, ab, class_weights, cfg, *maps)
    if reduction == "none":
        loss = terms
    return (loss, per_map) if return_per_map else loss
