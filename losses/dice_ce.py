"""Single-map Dice (+ CE) losses with the semantics users already trust, over the fused kernels.

* :class:`DiceCELoss`: MONAI ``DiceCELoss`` options (softmax / sigmoid / no activation / other_act, to_onehot_y,
  include_background, squared_pred, jaccard, smooth_nr, smooth_dr, batch, weight, lambda_dice, lambda_ce,
  label_smoothing, reduction mean / sum) plus ignore_index and soft_label; 1-D / 2D / 3D.
* :class:`DiceLoss`: MONAI ``DiceLoss`` (its defaults, reduction mean / sum / none, soft_label, ignore_index).
* :class:`BCEDiceLoss`: LGMSNet 2D ``0.5 * BCEWithLogits + Dice`` (sigmoid, per-sample plain Dice, 1e-5).
* :class:`DeepSupervisionDiceCE`: the same Dice + CE on several maps with fixed weights (coarse maps are
  upsampled to the labels inside the kernels, one fused call).

Every per-voxel option (class weights, label smoothing, one-hot / soft targets, the activation, ignore_index) runs
in the fused kernels; ``other_act`` (a user callable) is applied to the input before the Dice kernel call, and the
CE then needs a second fused call on the raw logits. Where segfuse deliberately differs from MONAI: docs/losses.md,
"MONAI conventions".
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.function import check_validate, next_validate
from segfuse.kernels.utils import InputShapeError, InputValueError, look_up_option

MULTILABEL_CE = ("bce", "softmax")


class _MonaiLoss(nn.Module):
    """MONAI's DiceLoss / DiceCELoss argument mapping onto one fused call (two with ``other_act``)."""

    def __init__(self, *, include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard,
                 reduction, reductions, smooth_nr, smooth_dr, batch, weight, soft_label, lambda_dice, lambda_ce,
                 label_smoothing, ignore_index, multilabel_ce, validate):
        super().__init__()
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be None or callable, got {type(other_act).__name__}")
        if int(bool(sigmoid)) + int(bool(softmax)) + int(other_act is not None) > 1:
            raise ValueError(f"at most one of sigmoid=True, softmax=True, other_act may be given, got sigmoid={sigmoid}, "
                             f"softmax={softmax}, other_act={other_act!r}")
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
        self.reduction = look_up_option("reduction", reduction, reductions)
        self.multilabel_ce = look_up_option("multilabel_ce", multilabel_ce, MULTILABEL_CE)
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.sigmoid, self.softmax, self.other_act = bool(sigmoid), bool(softmax), other_act
        self.lambda_dice, self.lambda_ce, self.ignore_index = float(lambda_dice), float(lambda_ce), ignore_index
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32),
                             persistent=False)
        self.validate = check_validate(validate, module=True)
        self._validated = False
        self.kw = dict(squared=squared_pred, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr, jaccard=jaccard,
                       soft_label=soft_label, weight_mode="fixed")
        self.register_buffer("_one", torch.ones(1), persistent=False)

    def _dice_weight(self, C: int, include_background: bool) -> Optional[torch.Tensor]:
        """The Dice class weights over all C classes, from ``weight`` given as MONAI's DiceCELoss takes it (one per
        class; its DiceLoss takes them without the background when include_background=False: see DiceLoss)."""
        if self.weight is None or C - (0 if include_background else 1) == 1:  # MONAI: no weights for one class
            return None
        return self.weight

    def _targets(self, input, target, check: bool):
        """MONAI's target forms as the kernels': integer labels when one-hot encoding is asked for (C > 1), an
        ignore label is given or a single channel has an integer target (its 0/1 labels, range-checked);
        otherwise the (B, C, ...) targets themselves, as floats."""
        C = input.shape[1]
        if ((self.to_onehot_y and C > 1) or self.ignore_index is not None
                or (C == 1 and isinstance(target, torch.Tensor) and not target.is_floating_point())):
            return as_label_problem(input, target, check=check)
        input, target = _one_d_as_2d(input, target)
        if target.dim() == input.dim() - 1 and C == 1:
            target = target.unsqueeze(1)
        if target.dim() != input.dim() or target.shape[1] != C:
            raise InputShapeError(
                f"target of shape {tuple(target.shape)} for input {tuple(input.shape)}: without one-hot encoding "
                f"(to_onehot_y=False) the target holds one channel per class, (B, {C}, *spatial); give labels "
                "(B, 1, *spatial) with to_onehot_y=True")
        return input, target.float()

    def _calls(self, input, target):
        """``(target, [(input, options) of each fused call]``."""
        validate, self._validated = next_validate(self.validate, self._validated)
        input, target = self._targets(input, target, check=validate is True)
        C = input.shape[1]
        include_background = self.include_background
        if not include_background and C == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
            include_background = True
        if self.sigmoid:
            activation = "sigmoid"
        elif self.softmax and C > 1:
            activation = "softmax"
        else:
            if self.softmax:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
            activation = "none"
        # MONAI's CE: BCE-with-logits for one channel, the softmax CE otherwise; segfuse's sigmoid multi-label
        # default is BCE per channel (multilabel_ce="bce")
        ce_bce = C == 1 or (activation == "sigmoid" and self.multilabel_ce == "bce")
        common = dict(include_background=include_background, ignore_index=self.ignore_index, validate=validate,
                      reduction=self.reduction, class_weight=self.weight if self.lambda_ce > 0 else None,
                      label_smoothing=self.label_smoothing if self.lambda_ce > 0 else 0.0, **self.kw)
        dice_w = self._dice_weight(C, include_background)
        if self.other_act is None:
            return target, [(input, dict(common, activation=activation, ce_bce=ce_bce, ce_weight=self.lambda_ce,
                                         dice_weight=self.lambda_dice, dice_class_weight=dice_w))]
        # other_act: the Dice of other_act(input) (no activation in the kernel), and the CE of the raw logits
        calls = [(self.other_act(input), dict(common, activation="none", ce_bce=ce_bce, ce_weight=0.0,
                                               dice_weight=self.lambda_dice, dice_class_weight=dice_w,
                                               class_weight=None, label_smoothing=0.0))]
        if self.lambda_ce > 0:
            calls.append((input, dict(common, activation="none", ce_bce=ce_bce, ce_weight=self.lambda_ce,
                                      dice_weight=0.0)))
        return target, calls

    def _loss(self, input, target):
        target, calls = self._calls(input, target)
        out = None
        for x, kw in calls:
            part = multi_logit_dice_ce([x], target, self._one.to(x.device), **kw)
            out = part if out is None else out + part
        return out

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(input, target)


class DiceCELoss(_MonaiLoss):
    """MONAI-compatible ``lambda_dice * Dice + lambda_ce * CE`` on one logit map, fused.

    Args (as MONAI's ``DiceCELoss``; segfuse's defaults are ``to_onehot_y=True`` and the softmax unless
    ``sigmoid`` or ``other_act`` is given):
        include_background: Dice only (CE always uses every class, as MONAI).
        to_onehot_y: the target is labels ``(B, 1, *spatial)`` or ``(B, *spatial)`` (integer, or float holding
            integers) one-hot encoded in the kernels; False: the target is ``(B, C, *spatial)`` one-hot or soft
            (any dtype, read as floats). A single channel's target is its 0/1 (or soft) target either way.
        sigmoid / softmax / other_act: at most one; ``softmax=None`` (default) is True unless ``sigmoid`` or
            ``other_act`` is given; all off (``softmax=False``): the Dice of the input itself (MONAI's default).
            ``other_act`` (a callable) is applied before the Dice; the CE always takes the raw logits.
        multilabel_ce: the CE with ``sigmoid=True`` and C > 1: "bce" (segfuse: BCE-with-logits per channel) or
            "softmax" (MONAI: the softmax cross-entropy). One channel: BCE-with-logits; C > 1 otherwise: softmax CE.
        squared_pred, jaccard, smooth_nr, smooth_dr, batch: the Dice as MONAI's.
        weight: ``(C,)`` class weights: CE ``weight`` (torch's weighted mean), BCE ``pos_weight`` for one channel
            (or per channel), and each class's Dice weight (``weight[1:]`` of the classes kept without the
            background; none when one class is left, as MONAI).
        lambda_dice, lambda_ce: the two terms' weights. label_smoothing: the softmax CE's (torch's).
        reduction: "mean" or "sum" (MONAI's DiceCELoss has no "none"; :class:`DiceLoss` has).
        soft_label: MONAI DiceLoss's soft-label Dice. ignore_index: nnU-Net's ignore label (labels only): its
            voxels count in neither term (CE is the mean over the others).
        validate: label-range and NaN/Inf checks, "first" (default): raise with the details on the first call,
            then only an asynchronous device-side check on CUDA (no host sync per step); ``True`` every call (one
            host read each), ``"async"``, ``False`` (see :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`).
    Inputs may be ``(B, C, N)`` (1-D, as MONAI's), ``(B, C, H, W)`` or ``(B, C, D, H, W)``.

    Example:
        >>> loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        >>> loss = loss_fn(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16)))
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = True, sigmoid: bool = False,
                 softmax: Optional[bool] = None, other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Optional[Sequence[float] | torch.Tensor] = None,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, label_smoothing: float = 0.0,
                 soft_label: bool = False, ignore_index: Optional[int] = None, multilabel_ce: str = "bce",
                 validate="first"):
        if softmax is None:
            softmax = not sigmoid and other_act is None
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, other_act=other_act, squared_pred=squared_pred, jaccard=jaccard,
                         reduction=reduction, reductions=("mean", "sum"), smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                         batch=batch, weight=weight, soft_label=soft_label, lambda_dice=lambda_dice,
                         lambda_ce=lambda_ce, label_smoothing=label_smoothing, ignore_index=ignore_index,
                         multilabel_ce=multilabel_ce, validate=validate)


class DiceLoss(_MonaiLoss):
    """MONAI's ``DiceLoss`` (same arguments and defaults), fused: the Dice of one map, no CE.

    ``weight``: one per class kept (without the background when ``include_background=False``, as MONAI).
    ``reduction``: "mean", "sum" or "none": the class-weighted Dice per (sample, class), shape ``(B, C', 1, ...)``
    (``(C', 1, ...)`` with ``batch=True``: MONAI's shapes), differentiable. Other arguments as :class:`DiceCELoss`.

    Example:
        >>> loss = DiceLoss(sigmoid=True)(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)).float())
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Optional[Sequence[float] | float | torch.Tensor] = None,
                 soft_label: bool = False, ignore_index: Optional[int] = None, validate="first"):
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, other_act=other_act, squared_pred=squared_pred, jaccard=jaccard,
                         reduction=reduction, reductions=("mean", "sum", "none"), smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, batch=batch, weight=weight, soft_label=soft_label, lambda_dice=1.0,
                         lambda_ce=0.0, label_smoothing=0.0, ignore_index=ignore_index, multilabel_ce="bce",
                         validate=validate)

    def _dice_weight(self, C: int, include_background: bool) -> Optional[torch.Tensor]:
        kept = C - (0 if include_background else 1)
        if self.weight is None or kept == 1:
            return None
        w = self.weight.reshape(-1).expand(kept) if self.weight.numel() == 1 else self.weight.reshape(-1)
        if w.numel() != kept:
            raise InputValueError(f"weight must hold one value per class kept ({kept}: include_background="
                                  f"{include_background}), got {w.numel()}")
        return w if include_background else torch.cat([w.new_ones(1), w])

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = self._loss(input, target)
        if self.reduction != "none":
            return out
        terms = out[:, 0]  # (B or 1, C): MONAI's (B, C') or, with batch, (C',)
        first = 0 if (self.include_background or input.shape[1] == 1) else 1
        terms = terms[:, first:]
        if self.kw["batch"]:
            terms = terms[0]
        return terms.reshape(*terms.shape, *([1] * (input.dim() - 2)))


def _one_d_as_2d(input, target):
    """A 1-D ``(B, C, N)`` input as ``(B, C, 1, N)``, its target ``(B, N)`` / ``(B, 1 or C, N)`` likewise."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        input = input.unsqueeze(2)
        if isinstance(target, torch.Tensor) and target.dim() in (2, 3):
            target = target.unsqueeze(-2)
    return input, target


def as_label_problem(input: torch.Tensor, target: torch.Tensor, check: bool = True):
    """MONAI's input forms as the kernels' form: a 1-D ``(B, C, N)`` input (and its ``(B, 1, N)`` / ``(B, N)``
    target) becomes ``(B, C, 1, N)``; a float target holding integer labels becomes int64 (``check``: a
    non-integer or non-finite value raises ``ValueError``, one host read)."""
    input, target = _one_d_as_2d(input, target)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if check:
            bad = int((~torch.isfinite(target) | (target != torch.round(target))).sum())
            if bad:
                raise ValueError(f"target is a float tensor with {bad} values that are not integer labels; give "
                                 "integer labels, or (B, C, ...) one-hot / soft targets with to_onehot_y=False")
        target = target.long()
    return input, target


class BCEDiceLoss(DiceCELoss):
    """LGMSNet 2D loss: ``0.5 * BCEWithLogits + Dice``, Dice = 1 - mean over samples of
    ``(2 sum p t + 1e-5) / (sum p + sum t + 1e-5)`` with ``p = sigmoid``. Logits ``(B, 1, H, W)``, labels 0/1."""

    def __init__(self, validate="first"):
        super().__init__(include_background=True, sigmoid=True, softmax=False, squared_pred=False, batch=False,
                         lambda_dice=1.0, lambda_ce=0.5, validate=validate)


class DeepSupervisionDiceCE(nn.Module):
    """Dice + CE on several logit maps with fixed weights (deep supervision), one fused call.

    Maps come coarse -> fine, as every model in :mod:`segfuse.models` returns them; maps coarser than the
    labels are upsampled to the label size (LoMix / MERIT style; nnU-Net instead downsamples the labels,
    which is not what this does; the kernels read each map at its own resolution and upsample it in
    registers). ``weights`` default to nnU-Net's ``1/2^k`` for the map ``k`` steps coarser than the finest
    one (the last map gets the largest weight), normalised to sum 1. Dice options default to MONAI's
    (plain denominators, per sample); ``validate`` as :class:`DiceCELoss` ("first"); other keyword
    arguments (e.g. ``upsample="nearest"``, ``ignore_index``) go to :func:`multi_logit_dice_ce`.
    """

    def __init__(self, num_maps: int, weights: Sequence[float] | None = None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, squared: bool = False, batch: bool = False, validate="first", **dice_kw):
        super().__init__()
        if weights is None:
            w = torch.tensor([0.5 ** (num_maps - 1 - i) for i in range(num_maps)])  # finest (last) largest
            w = w / w.sum()
        else:
            w = torch.as_tensor(list(weights), dtype=torch.float32)
        if w.numel() != num_maps:
            raise ValueError(f"weights must hold num_maps={num_maps} values, got {w.numel()}")
        self.register_buffer("weights", w.float(), persistent=False)
        self.validate = check_validate(validate, module=True)
        self._validated = False
        self.kw = dict(ce_weight=lambda_ce, dice_weight=lambda_dice, weight_mode="fixed", squared=squared,
                       batch=batch, **dice_kw)

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        validate, self._validated = next_validate(self.validate, self._validated)
        return multi_logit_dice_ce(list(logits), target, self.weights.to(logits[0].device), validate=validate,
                                   **self.kw)
