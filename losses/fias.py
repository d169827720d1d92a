"""FIAS deep supervision: ``0.4 Dice + 0.6 CE`` on the main output and on every non-empty subset of the
auxiliary maps (each subset's logits averaged), over the fused multi-logit loss kernels.

FIAS's public scaffold (``Xiwei-web/FIAS: fias/losses``) scores the main output with
``l = 0.4 Dice + 0.6 CE`` and adds a MERIT-like term: each of the ``2^A - 1`` non-empty subsets of the
``A`` auxiliary logit maps is averaged and scored with the same ``l``, weight ``1 / (2^A - 1)`` each
(MERIT sums the subset's maps instead: ``aux_combine="sum"``). Dice: softmax, per class over the whole
batch, plain denominators ``sum p + sum g``, smooth 1e-5, mean over classes with background.

Kernel mapping: the main map is one fused call (one supervised map, weight 1); the auxiliary maps are a
second fused call with the mixing operator ``"mean"`` (or ``"add"``): the ``A`` base maps are the
singleton subsets and the operator adds the ``2^A - 1 - A`` larger subsets, all with fixed weights
``1 / (2^A - 1)``. Maps coarser than the labels are upsampled to them first (bilinear, as the scaffold).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce, num_supervised_maps
from segfuse.kernels.multi_logit_loss.function import check_validate, next_validate
from segfuse.kernels.utils import look_up_option

AUX_COMBINE = {"mean": "mean", "sum": "add"}


class FIASLoss(nn.Module):
    """FIAS supervision over a model's deep-supervision outputs ``[aux_1 .. aux_A, main]`` (coarse -> fine).

    Args:
        num_maps: number of maps the model returns in training (``A + 1``; the last is the main output).
        aux_combine: "mean" (FIAS scaffold: a subset's auxiliary logits are averaged) or "sum" (MERIT).
        ce_weight, dice_weight: 0.6 / 0.4 (FIAS).
        validate: label-range and NaN checks, "first" (default: raise with the details on the first call, then
            only asynchronous checks on CUDA, no host sync per step), ``True``, ``"async"`` or ``False`` (see
            :func:`segfuse.kernels.multi_logit_loss.multi_logit_dice_ce`).

    Forward: ``maps`` list of ``(B, C, *spatial_k)`` logits, ``target (B, *spatial)`` or ``(B, 1, *spatial)``
    integer labels at the finest resolution. Returns the fp32 scalar
    ``l(main) + sum_{S non-empty subset of aux} l(combine(S)) / (2^A - 1)``.

    Example:
        >>> loss_fn = FIASLoss(4)
        >>> maps = [torch.randn(2, 4, s, s, requires_grad=True) for s in (8, 16, 32, 64)]
        >>> loss = loss_fn(maps, torch.randint(0, 4, (2, 64, 64)))
    """

    def __init__(self, num_maps: int = 4, aux_combine: str = "mean", ce_weight: float = 0.6,
                 dice_weight: float = 0.4, ignore_index: Optional[int] = None, validate="first"):
        super().__init__()
        if not isinstance(num_maps, int) or isinstance(num_maps, bool) or num_maps < 2:
            raise ValueError(f"num_maps must be an int >= 2 (auxiliary maps + the main output), got {num_maps!r}")
        self.num_maps = num_maps
        self.aux_combine = look_up_option("aux_combine", aux_combine, tuple(AUX_COMBINE))
        A = num_maps - 1
        self.aux_ops = (AUX_COMBINE[self.aux_combine],) if A >= 2 else ()
        T = num_supervised_maps(A, self.aux_ops)  # = 2^A - 1: every non-empty subset once
        self.register_buffer("main_weight", torch.ones(1), persistent=False)
        self.register_buffer("aux_weights", torch.full((T,), 1.0 / T), persistent=False)
        self.validate = check_validate(validate, module=True)
        self._validated = False
        self.kw = dict(ce_weight=ce_weight, dice_weight=dice_weight, weight_mode="fixed", squared=False,
                       batch=True, include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, ignore_index=ignore_index)

    @property
    def names(self):
        from segfuse.kernels.multi_logit_loss import map_names
        return ["main"] + [n.replace("p", "aux") for n in map_names(self.num_maps - 1, self.aux_ops)]

    def forward(self, maps: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(maps, (list, tuple)) or len(maps) != self.num_maps:
            got = len(maps) if isinstance(maps, (list, tuple)) else type(maps).__name__
            raise ValueError(f"maps must be a list of num_maps={self.num_maps} logit tensors "
                             f"[aux_1 .. aux_{self.num_maps - 1}, main], got {got}")
        dev = maps[-1].device
        validate, self._validated = next_validate(self.validate, self._validated)
        main = multi_logit_dice_ce([maps[-1]], target, self.main_weight.to(dev), validate=validate, **self.kw)
        aux = multi_logit_dice_ce(list(maps[:-1]), target, self.aux_weights.to(dev), ops=self.aux_ops,
                                  validate=validate, **self.kw)
        return main + aux
