"""Single-map Dice + CE losses with the semantics users already trust, over the fused kernels.

* :class:`DiceCELoss`: MONAI ``DiceCELoss`` options (softmax / sigmoid, to_onehot_y, include_background,
  squared_pred, smooth_nr, smooth_dr, batch, lambda_dice, lambda_ce, ignore_index) for label targets (integer,
  or float holding integers), 1-D / 2D / 3D.
* :class:`BCEDiceLoss`: LGMSNet 2D ``0.5 * BCEWithLogits + Dice`` (sigmoid, per-sample plain Dice, 1e-5).
* :class:`DeepSupervisionDiceCE`: the same Dice + CE on several maps with fixed weights (coarse maps are
  upsampled to the labels inside the kernels, one fused call).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.function import check_validate, next_validate


class DiceCELoss(nn.Module):
    """MONAI-compatible ``lambda_dice * Dice + lambda_ce * CE`` on one logit map, fused.

    Args (as MONAI's ``DiceCELoss``): include_background (Dice only; CE always uses every class, as
    MONAI), to_onehot_y (targets are labels ``(B, 1, *spatial)`` or ``(B, *spatial)``, integer or float
    tensors holding integers; True is required for C > 1 (one-hot / soft targets are not supported yet); for
    a single sigmoid channel the labels are the 0/1 target either way, as MONAI does), sigmoid / softmax (exactly one; sigmoid with C == 1 uses BCE-with-logits like MONAI, with
    C > 1 it uses per-channel BCE where MONAI would use softmax CE), squared_pred, smooth_nr,
    smooth_dr, batch, lambda_dice, lambda_ce. ``ignore_index`` (nnU-Net's ignore label, as torch's
    ``CrossEntropyLoss``): voxels with that label count in neither term (CE is the mean over the others).
    Inputs may be ``(B, C, N)`` (1-D, as MONAI's), ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
    ``reduction`` is "mean" only. ``validate``: label-range and
    NaN/Inf checks, "first" (default): raise with the details on the first call, then only an asynchronous
    device-side check on CUDA (no host sync per step); ``True`` every call (one host read each), ``"async"``,
    ``False`` (see :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`).

    Example:
        >>> loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        >>> loss = loss_fn(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16)))
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = True, sigmoid: bool = False,
                 softmax: bool = True, squared_pred: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 ignore_index: Optional[int] = None, validate="first"):
        super().__init__()
        if sigmoid == softmax:
            raise ValueError(f"exactly one of sigmoid / softmax must be True, got sigmoid={sigmoid}, softmax={softmax}")
        if not to_onehot_y and not sigmoid:
            raise ValueError("to_onehot_y=False (one-hot / soft targets) is not supported with softmax: pass "
                             "integer labels with to_onehot_y=True")
        self.to_onehot_y = to_onehot_y
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
        self.validate = check_validate(validate, module=True)
        self._validated = False
        self.kw = dict(ce_weight=lambda_ce, dice_weight=lambda_dice, sigmoid=sigmoid, squared=squared_pred,
                       batch=batch, include_background=include_background, smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, weight_mode="fixed", ignore_index=ignore_index)
        self.register_buffer("_one", torch.ones(1), persistent=False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        validate, self._validated = next_validate(self.validate, self._validated)
        input, target = as_label_problem(input, target, check=validate is True)
        if not self.to_onehot_y and input.shape[1] != 1:
            raise ValueError(f"to_onehot_y=False needs a single sigmoid channel (a 0/1 target), got input of shape "
                             f"{tuple(input.shape)}; one-hot / soft targets are not supported yet")
        return multi_logit_dice_ce([input], target, self._one.to(input.device), validate=validate, **self.kw)


def as_label_problem(input: torch.Tensor, target: torch.Tensor, check: bool = True):
    """MONAI's input forms as the kernels' form: a 1-D ``(B, C, N)`` input (and its ``(B, 1, N)`` / ``(B, N)``
    target) becomes ``(B, C, 1, N)``; a float target holding integer labels becomes int64 (``check``: a
    non-integer or non-finite value raises ``ValueError``, one host read)."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        input = input.unsqueeze(2)
        if isinstance(target, torch.Tensor) and target.dim() in (2, 3):
            target = target.unsqueeze(-2)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if check:
            bad = int((~torch.isfinite(target) | (target != torch.round(target))).sum())
            if bad:
                raise ValueError(f"target is a float tensor with {bad} values that are not integer labels; give "
                                 "integer labels (one-hot / soft targets are not supported yet)")
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
