"""``LoMixLoss``: LoMix combinatorial logit-mixing supervision over the fused multi-logit kernels."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.utils import check_spatial_dims, look_up_option
from segfuse.kernels.multi_logit_loss import (LOMIX_OPS, OPS, attn_rows, concat_rows, map_names, multi_logit_dice_ce,
                                              num_supervised_maps, subsets, transform_weights)
from segfuse.kernels.multi_logit_loss.function import check_validate, next_validate

_WEIGHT_MODES = {"free": "softplus", "normalized": "normalized"}
_CONCAT_MODES = ("learned", "random")


class LoMixLoss(nn.Module):
    """LoMix loss (Rahman & Marculescu, NeurIPS 2025): every base logit map plus every mutant map
    ``op(S)`` (op in ``operators``, S a subset of size 2..M) is supervised with
    ``ce_weight * CE + dice_weight * Dice`` and a learnable softplus weight.

    The mutants are built inside the fused loss kernels per voxel tile and never written to memory; maps
    coarser than the labels are read at their own resolution and upsampled in registers.

    Args:
        num_maps: M, number of decoder logit maps (any; ``T = M + len(operators) (2^M - 1 - M)`` supervised maps).
        num_classes: C.
        spatial_dims: 2 or 3.
        operators: subset of ``("add", "mul", "concat", "attention")`` in the order their maps are listed.
        weight_mode: "free": ``w = softplus(raw)``, the published objective (no bound; under Adam every
            raw weight drifts down since ``dL/d raw = sigmoid(raw) * loss_t > 0``); "normalized": the softplus
            weights rescaled to sum to ``T ln 2`` (their sum at init), so only their ratios are learned.
        concat: "learned": one registered 1x1 conv per subset (Kaiming-uniform init, like ``nn.Conv``);
            "random": reproduce the released code, which builds a fresh, untrained conv on every forward
            (a new random projection each step, never optimised).
        ce_weight, dice_weight: 0.3 / 0.7 as released.
        squared, batch, include_background, smooth_nr, smooth_dr: Dice options (released LoMix: squared
            denominators, batch-global sums, background included, 1e-5 / 1e-5).
        ignore_index: a label outside the classes whose voxels count in no term (nnU-Net's ignore label);
            None: every voxel counts.
        validate: in-pass label / NaN checks. "first" (default): the first call raises ``ValueError`` with
            the details, later calls only check asynchronously on CUDA (``torch._assert_async``, no host sync
            per step); ``True``: every call (one host read each); ``"async"``; ``False``.

    Parameters: ``raw_weights (T,)`` zeros (``softplus(0) = ln 2``); ``concat_weight (R_c, C, C)``,
    ``concat_bias (n_subsets, C)`` ("concat", learned); ``attn_weight (R_a, C)``, ``attn_bias (R_a,)``
    ("attention"; one score conv per (subset size, member), shared by all subsets of that size, as
    released).

    Examples:
        >>> loss_fn = LoMixLoss(4, 9, 2)                                     # 2D, 48 supervised maps
        >>> maps = [torch.randn(2, 9, 56, 56, requires_grad=True) for _ in range(4)]
        >>> loss = loss_fn(maps, torch.randint(0, 9, (2, 56, 56)))
        >>> loss3d = LoMixLoss(3, 4, 3, operators=("add", "mul"))            # 3D, 3 maps
    """

    def __init__(self, num_maps: int, num_classes: int, spatial_dims: int, operators: Sequence[str] = LOMIX_OPS,
                 weight_mode: str = "free", concat: str = "learned", ce_weight: float = 0.3,
                 dice_weight: float = 0.7, squared: bool = True, batch: bool = True,
                 include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 ignore_index: Optional[int] = None, validate="first"):
        super().__init__()
        if not isinstance(num_maps, int) or num_maps < 1:
            raise ValueError(f"num_maps must be a positive int, got {num_maps!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (softmax), got {num_classes!r}")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        ops = tuple(look_up_option("operators", op, OPS) for op in operators)
        if len(set(ops)) != len(ops):
            raise ValueError(f"operators must not repeat, got {ops}")
        if ops and num_maps < 2:
            raise ValueError("mixing operators need num_maps >= 2")
        self.weight_mode = look_up_option("weight_mode", weight_mode, tuple(_WEIGHT_MODES))
        self.concat = look_up_option("concat", concat, _CONCAT_MODES)
        self.num_maps, self.num_classes, self.operators = num_maps, num_classes, ops
        self.validate = check_validate(validate, module=True)
        self._validated = False
        self.kw = dict(ce_weight=ce_weight, dice_weight=dice_weight, squared=squared, batch=batch,
                       include_background=include_background, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                       ignore_index=ignore_index)
        C, M = num_classes, num_maps
        self.raw_weights = nn.Parameter(torch.zeros(num_supervised_maps(M, ops)))
        fan = torch.tensor([len(s) * C for s in subsets(M) for _ in s], dtype=torch.float32)
        self.register_buffer("_concat_bound", (1.0 / fan.sqrt()).view(-1, 1, 1), persistent=False)
        if "concat" in ops and self.concat == "learned":
            self.concat_weight = nn.Parameter(torch.empty(concat_rows(M), C, C))
            self.concat_bias = nn.Parameter(torch.empty(len(subsets(M)), C))
        else:
            self.concat_weight = self.concat_bias = None
        if "attention" in ops:
            self.attn_weight = nn.Parameter(torch.empty(attn_rows(M), C))
            self.attn_bias = nn.Parameter(torch.empty(attn_rows(M)))
        else:
            self.attn_weight = self.attn_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero raw weights; concat / attention convs initialised as ``nn.Conv`` (bound ``1/sqrt(fan_in)``)."""
        nn.init.zeros_(self.raw_weights)
        if self.concat_weight is not None:
            self.concat_weight.data.copy_(self._draw_concat_weight(self.concat_weight.device))
            self.concat_bias.data.copy_(self._draw_concat_bias(self.concat_bias.device))
        if self.attn_weight is not None:
            bound = 1.0 / math.sqrt(self.num_classes)
            nn.init.uniform_(self.attn_weight, -bound, bound)
            nn.init.uniform_(self.attn_bias, -bound, bound)

    def _draw_concat_weight(self, device):
        b = self._concat_bound.to(device)
        return (torch.rand(b.shape[0], self.num_classes, self.num_classes, device=device) * 2 - 1) * b

    def _draw_concat_bias(self, device):
        fan = torch.tensor([len(s) * self.num_classes for s in subsets(self.num_maps)], dtype=torch.float32,
                           device=device)
        return (torch.rand(fan.numel(), self.num_classes, device=device) * 2 - 1) / fan.sqrt()[:, None]

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``logits``: M maps ``(B, C, *spatial)`` coarse to fine (coarser ones are upsampled to the label size,
        bilinear / trilinear, inside the kernels);
        ``target``: integer labels ``(B, *spatial)``. Returns the fp32 scalar loss."""
        if isinstance(logits, torch.Tensor):
            logits = list(logits.unbind(0))
        if len(logits) != self.num_maps:
            raise ValueError(f"logits must hold num_maps={self.num_maps} maps, got {len(logits)}")
        for i, x in enumerate(logits):
            if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.num_classes:
                raise ValueError(f"logits[{i}] must be (B, {self.num_classes}, *spatial) with {self.spatial_dims} "
                                 f"spatial dims, got shape {tuple(x.shape)}")
        cw, cb = self.concat_weight, self.concat_bias
        if "concat" in self.operators and self.concat == "random":
            dev = logits[0].device
            cw, cb = self._draw_concat_weight(dev), self._draw_concat_bias(dev)
        validate, self._validated = next_validate(self.validate, self._validated)
        loss, per_map = multi_logit_dice_ce(
            logits, target, self.raw_weights, ops=self.operators, concat_weight=cw, concat_bias=cb,
            attn_weight=self.attn_weight, attn_bias=self.attn_bias, weight_mode=_WEIGHT_MODES[self.weight_mode],
            return_per_map=True, validate=validate, **self.kw)
        self.last_per_map_loss = per_map.detach()
        return loss

    def map_names(self):
        return map_names(self.num_maps, self.operators)

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """The effective per-map weights ``(T,)`` (softplus, normalised if so configured)."""
        return transform_weights(self.raw_weights.float(), _WEIGHT_MODES[self.weight_mode])

    def interpret(self) -> Dict[str, float]:
        """Learned weight per supervised map, keyed by readable names ("p0", "add(p1,p3)", ...)."""
        return dict(zip(self.map_names(), self.weights().tolist()))

    def extra_repr(self) -> str:
        return (f"num_maps={self.num_maps}, num_classes={self.num_classes}, spatial_dims={self.spatial_dims}, "
                f"operators={self.operators}, weight_mode={self.weight_mode!r}, concat={self.concat!r}, "
                f"supervised_maps={self.raw_weights.numel()}")
