"""Autograd Function, torch.library registration and functional API of the fused multi-logit loss.

Data path: :func:`multi_logit_dice_ce` validates, upsamples maps coarser than the labels
(``F.interpolate``, differentiable, eager) and dispatches: Triton (CUDA, or CPU under
``TRITON_INTERPRET=1``) -> :class:`MultiLogitDiceCEFunction` -> ``torch.ops.segfuse.mll_fwd`` /
``mll_bwd`` (custom ops with fake implementations, so ``torch.compile`` traces through without graph
breaks) -> launchers in :mod:`.triton`; otherwise the eager reference with plain autograd.
"""
from __future__ import annotations

import warnings

from typing import List, Optional, Sequence

import torch

from ..utils import check_tensor, look_up_option
from ..dispatch import use_triton
from . import reference
from .reference import OPS, WEIGHT_MODES, attn_rows, concat_rows, num_supervised_maps, subsets, upsample_to

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
MAX_TRITON_MAPS = 5


def _raise_bad(res: torch.Tensor, num_maps: int, num_classes: int, sigmoid: bool) -> None:
    bad = res[-(num_maps + 1):].tolist()  # one small device->host read
    if bad[-1] > 0:
        hi = 1 if (sigmoid and num_classes == 1) else num_classes - 1
        raise ValueError(f"target holds {int(bad[-1])} labels outside [0, {hi}] (negative or >= num_classes="
                         f"{num_classes})")
    for i, n in enumerate(bad[:-1]):
        if n > 0:
            raise ValueError(f"logits[{i}] contains {int(n)} NaN or Inf values")


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("segfuse::mll_fwd", mutates_args=())
def _mll_fwd_op(maps: List[torch.Tensor], target: torch.Tensor, raw_weights: torch.Tensor,
                concat_weight: Optional[torch.Tensor], concat_bias: Optional[torch.Tensor],
                attn_weight: Optional[torch.Tensor], attn_bias: Optional[torch.Tensor], ops: str,
                weight_mode: str, ce_weight: float, dice_weight: float, sigmoid: bool, squared: bool,
                batch: bool, include_background: bool, smooth_nr: float, smooth_dr: float,
                validate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import mll_forward
    ops_t = tuple(o for o in ops.split(",") if o)
    res, coef = mll_forward(maps, target, raw_weights, ops_t, concat_weight, concat_bias, attn_weight, attn_bias,
                            weight_mode=weight_mode, ce_weight=ce_weight, dice_weight=dice_weight,
                            sigmoid=sigmoid, squared=squared, batch=batch,
                            include_background=include_background, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    if validate:
        _raise_bad(res, len(maps), maps[0].shape[1], sigmoid)
    return res, coef


@_mll_fwd_op.register_fake
def _(maps, target, raw_weights, concat_weight, concat_bias, attn_weight, attn_bias, ops, weight_mode,
      ce_weight, dice_weight, sigmoid, squared, batch, include_background, smooth_nr, smooth_dr, validate):
    T = raw_weights.numel()
    B, C = maps[0].shape[:2]
    res = maps[0].new_empty(1 + 5 * T + len(maps) + 1, dtype=torch.float32)
    coef = maps[0].new_empty((1 if batch else B, 2, T, C), dtype=torch.float32)
    return res, coef


@torch.library.custom_op("segfuse::mll_bwd", mutates_args=())
def _mll_bwd_op(grad_out: torch.Tensor, maps: List[torch.Tensor], target: torch.Tensor, raw_weights: torch.Tensor,
                concat_weight: Optional[torch.Tensor], concat_bias: Optional[torch.Tensor],
                attn_weight: Optional[torch.Tensor], attn_bias: Optional[torch.Tensor], res: torch.Tensor,
                coef: torch.Tensor, ops: str, sigmoid: bool, squared: bool, batch: bool,
                concat_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton import mll_backward
    ops_t = tuple(o for o in ops.split(",") if o)
    return mll_backward(grad_out, maps, target, raw_weights, ops_t, concat_weight, concat_bias, attn_weight,
                        attn_bias, res, coef, sigmoid=sigmoid, squared=squared, batch=batch,
                        concat_grad=concat_grad)


@_mll_bwd_op.register_fake
def _(grad_out, maps, target, raw_weights, concat_weight, concat_bias, attn_weight, attn_bias, res, coef, ops,
      sigmoid, squared, batch, concat_grad):
    from .triton import _param_layout
    M = len(maps)
    C = maps[0].shape[1]
    gx = maps[0].new_empty((M,) + tuple(maps[0].shape))
    gw = raw_weights.new_empty(raw_weights.shape, dtype=torch.float32)
    gp = maps[0].new_empty(_param_layout(M, C)[3], dtype=torch.float32)
    return gx, gw, gp


class MultiLogitDiceCEFunction(torch.autograd.Function):
    """Fused loss; returns ``(loss, per_map_losses)`` (the second output is not differentiable)."""

    @staticmethod
    def forward(ctx, target, raw_weights, cw, cb, aw, ab, cfg, *maps):
        res, coef = torch.ops.segfuse.mll_fwd(
            list(maps), target, raw_weights, cw, cb, aw, ab, cfg["ops"], cfg["weight_mode"], cfg["ce_weight"],
            cfg["dice_weight"], cfg["sigmoid"], cfg["squared"], cfg["batch"], cfg["include_background"],
            cfg["smooth_nr"], cfg["smooth_dr"], cfg["validate"])
        ctx.save_for_backward(target, raw_weights, cw, cb, aw, ab, res, coef, *maps)
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)  # no zero-filled grad for the per-map output
        T = raw_weights.numel()
        per_map = res[1:1 + T]
        ctx.mark_non_differentiable(per_map)
        return res[0], per_map

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_map):
        if grad_loss is None:
            return (None,) * (7 + len(ctx.saved_tensors) - 8)
        target, raw_weights, cw, cb, aw, ab, res, coef, *maps = ctx.saved_tensors
        cfg = ctx.cfg
        concat_grad = cw is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3])
        gx, gw, gp = torch.ops.segfuse.mll_bwd(
            grad_loss.reshape(1).float().contiguous(), maps, target, raw_weights, cw, cb, aw, ab, res, coef,
            cfg["ops"], cfg["sigmoid"], cfg["squared"], cfg["batch"], concat_grad)
        M = len(maps)
        C = maps[0].shape[1]
        from .triton import _param_layout
        off_cb, off_aw, off_ab, NP = _param_layout(M, C)
        g_cw = gp[:off_cb].view(-1, C, C) if concat_grad else None
        g_cb = gp[off_cb:off_aw].view(-1, C) if concat_grad else None
        g_aw = gp[off_aw:off_ab].view(-1, C) if aw is not None else None
        g_ab = gp[off_ab:NP] if aw is not None else None
        gw = gw.to(raw_weights.dtype)
        return (None, gw, g_cw, g_cb, g_aw, g_ab, None, *gx.unbind(0))


# ----------------------------------------------------------------------------- functional API
def _check_maps(logits, target: torch.Tensor):
    if isinstance(logits, torch.Tensor):
        if logits.dim() < 4:
            raise ValueError(f"stacked logits must be (M, B, C, *spatial), got shape {tuple(logits.shape)}")
        maps = list(logits.unbind(0))
    elif isinstance(logits, (list, tuple)) and len(logits):
        maps = list(logits)
    else:
        raise TypeError("logits must be a non-empty list of (B, C, *spatial) tensors or a stacked "
                        "(M, B, C, *spatial) tensor")
    for i, x in enumerate(maps):
        check_tensor(f"logits[{i}]", x)
        if x.dim() not in (4, 5):
            raise ValueError(f"logits[{i}] must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.dim() != maps[0].dim() or x.shape[:2] != maps[0].shape[:2]:
            raise ValueError(f"logits[{i}] has shape {tuple(x.shape)}; every map must share rank, batch and "
                             f"classes with logits[0] {tuple(maps[0].shape)}")
        if x.dtype != maps[0].dtype or x.device != maps[0].device:
            raise TypeError(f"logits[{i}] is {x.dtype} on {x.device}; every map must match logits[0] "
                            f"({maps[0].dtype} on {maps[0].device})")
    return maps


def _check_target(target, maps):
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of integer labels, got {type(target).__name__}")
    if target.is_floating_point() or target.dtype == torch.bool or target.dtype not in _INT_DTYPES:
        raise TypeError(f"target must hold integer labels (uint8/int8/int16/int32/int64), got {target.dtype}")
    d = maps[0].dim() - 2
    if target.dim() == d + 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != d + 1:
        raise ValueError(f"target must be (B, *spatial) or (B, 1, *spatial) labels for {d}D logits, "
                         f"got shape {tuple(target.shape)}")
    if target.shape[0] != maps[0].shape[0]:
        raise ValueError(f"target batch {target.shape[0]} != logits batch {maps[0].shape[0]}")
    if target.device != maps[0].device:
        raise ValueError(f"target is on {target.device} but logits on {maps[0].device}")
    size = tuple(target.shape[1:])
    for i, x in enumerate(maps):
        for ax, (n, s) in enumerate(zip(size, x.shape[2:])):
            if s > n or n % s:
                raise ValueError(f"logits[{i}] spatial size {tuple(x.shape[2:])} is not the target size {size} "
                                 f"divided by an integer factor (axis {ax}: {n} / {s})")
    return target


def _check_param(name, t, shape, device):
    if t is None:
        raise ValueError(f"{name} is required by the chosen ops; expected shape {shape}")
    check_tensor(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but logits on {device}")
    return t


def multi_logit_dice_ce(logits, target: torch.Tensor, raw_weights: torch.Tensor, *, ops: Sequence[str] = (),
                        concat_weight: Optional[torch.Tensor] = None, concat_bias: Optional[torch.Tensor] = None,
                        attn_weight: Optional[torch.Tensor] = None, attn_bias: Optional[torch.Tensor] = None,
                        weight_mode: str = "softplus", ce_weight: float = 0.3, dice_weight: float = 0.7,
                        sigmoid: bool = False, squared: bool = True, batch: bool = True,
                        include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                        validate: bool = True, return_per_map: bool = False):
    """``sum_t w_t * (ce_weight * CE_t + dice_weight * Dice_t)`` over base and mutant maps, fused.

    Args:
        logits: M maps ``(B, C, *spatial)`` (2D or 3D; fp32/fp16/bf16, all the same dtype) as a list, coarse to
            fine in any order, or one stacked ``(M, B, C, *spatial)`` tensor. A map coarser than ``target`` by an
            integer factor per axis is upsampled (bilinear/trilinear, ``align_corners=False``) first.
        target: integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` (uint8 .. int64). Softmax: values in
            ``[0, C)``; sigmoid with C == 1: values in {0, 1}.
        raw_weights: ``(T,)`` with ``T = M + len(ops) * (2^M - 1 - M)`` supervised maps (base maps first, then
            per op every subset of size >= 2 in ``itertools.combinations`` order).
        ops: subset of ``("add", "mul", "concat", "attention")``: LoMix mutant operators.
        concat_weight / concat_bias: ``(R_c, C, C)`` / ``(n_subsets, C)`` (see :mod:`.reference`); required for
            "concat". attn_weight / attn_bias: ``(R_a, C)`` / ``(R_a,)``; required for "attention".
        weight_mode: "softplus" (``w = softplus(raw)``, LoMix), "normalized" (softplus rescaled to sum to
            ``T ln 2``) or "fixed" (``w = raw``, deep supervision with fixed weights).
        ce_weight, dice_weight: the two loss weights (LoMix 0.3 / 0.7; MONAI ``lambda_ce`` / ``lambda_dice``).
        sigmoid: False: softmax CE + softmax Dice over C classes; True: sigmoid + BCE-with-logits (C == 1 binary,
            labels 0/1; C > 1 multi-label against one-hot labels).
        squared: Dice denominators ``sum p^2 + sum g^2`` (True) or ``sum p + sum g``.
        batch: Dice sums over the batch (True) or per sample then averaged.
        include_background: include class 0 in the Dice mean (CE always uses every class, as MONAI).
        smooth_nr, smooth_dr: Dice smoothing of numerator / denominator.
        validate: check labels and NaN/Inf logits in-pass and raise ``ValueError`` (costs one tiny
            device->host read per call on the Triton path).
        return_per_map: also return the ``(T,)`` per-map losses (not differentiable).
    Returns:
        fp32 scalar loss (and the per-map losses).

    Example:
        >>> maps = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(4)]
        >>> y = torch.randint(0, 3, (2, 8, 8))
        >>> loss = multi_logit_dice_ce(maps, y, torch.zeros(48), ops=("add", "mul"))  # doctest: +SKIP
    """
    maps = _check_maps(logits, target)
    target = _check_target(target, maps)
    M = len(maps)
    B, C = maps[0].shape[:2]
    ops = tuple(ops)
    for op in ops:
        look_up_option("ops", op, OPS)
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops must not repeat an operator, got {ops}")
    if ops and M < 2:
        raise ValueError(f"mixing ops need at least 2 logit maps, got {M}")
    weight_mode = look_up_option("weight_mode", weight_mode, WEIGHT_MODES)
    T = num_supervised_maps(M, ops)
    check_tensor("raw_weights", raw_weights)
    if raw_weights.numel() != T or raw_weights.dim() != 1:
        raise ValueError(f"raw_weights must have shape ({T},): {M} logit maps + {len(ops)} ops x "
                         f"{len(subsets(M)) if ops else 0} subsets; got {tuple(raw_weights.shape)} "
                         f"(wrong number of logit maps or weights?)")
    dev = maps[0].device
    if raw_weights.device != dev:
        raise ValueError(f"raw_weights is on {raw_weights.device} but logits on {dev}")
    if sigmoid and "concat" in ops or sigmoid and "attention" in ops:
        pass  # allowed: mixing is independent of the activation
    if "concat" in ops:
        _check_param("concat_weight", concat_weight, (concat_rows(M), C, C), dev)
        _check_param("concat_bias", concat_bias, (len(subsets(M)), C), dev)
    else:
        concat_weight = concat_bias = None
    if "attention" in ops:
        _check_param("attn_weight", attn_weight, (attn_rows(M), C), dev)
        _check_param("attn_bias", attn_bias, (attn_rows(M),), dev)
    else:
        attn_weight = attn_bias = None
    if dice_weight < 0 or ce_weight < 0:
        raise ValueError(f"ce_weight and dice_weight must be >= 0, got {ce_weight}, {dice_weight}")
    kw = dict(weight_mode=weight_mode, ce_weight=float(ce_weight), dice_weight=float(dice_weight),
              sigmoid=bool(sigmoid), squared=bool(squared), batch=bool(batch),
              include_background=bool(include_background), smooth_nr=float(smooth_nr),
              smooth_dr=float(smooth_dr))
    triton_path = use_triton(dev)
    if triton_path and M > MAX_TRITON_MAPS:
        warnings.warn(f"multi_logit_dice_ce: the fused kernels take at most {MAX_TRITON_MAPS} logit maps, got {M}; "
                      "running the eager reference", RuntimeWarning, stacklevel=2)
    if not (triton_path and M <= MAX_TRITON_MAPS):
        if validate:
            reference.check_reference_inputs(maps, target, C, sigmoid)
        return reference.multi_logit_dice_ce_reference(
            maps, target, raw_weights, ops=ops, concat_weight=concat_weight, concat_bias=concat_bias,
            attn_weight=attn_weight, attn_bias=attn_bias, return_per_map=return_per_map, **kw)
    size = tuple(target.shape[1:])
    maps = [upsample_to(x, size).contiguous() for x in maps]
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    cfg = dict(kw, ops=",".join(ops), validate=bool(validate))
    loss, per_map = MultiLogitDiceCEFunction.apply(
        target.contiguous(), f32(raw_weights), f32(concat_weight), f32(concat_bias), f32(attn_weight),
        f32(attn_bias), cfg, *maps)
    return (loss, per_map) if return_per_map else loss
