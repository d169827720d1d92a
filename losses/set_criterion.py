"""Hungarian-matching set criterion of the MaskMed head (Mask2Former-style, matched once at the final stage).

MaskMed (Xie & Agam, arXiv 2511.15603) predicts, per object query, a class vector over ``num_classes + 1``
(the last column is "no object") and a class-agnostic binary mask, refined stage by stage from coarse to
fine. The loss matches queries to ground-truth masks with the Hungarian algorithm and supervises the matched
pairs (design notes, ``methods.md`` section 5):

* **matching once, at the final stage**, the assignment reused for every earlier (deep-supervision) stage
  (MaskMed; Mask2Former instead re-matches every decoder layer);
* cost ``class_weight * (-p_q(c_gt)) + mask_weight * BCE + dice_weight * Dice`` (Mask2Former ``2 / 5 / 5``);
* loss per stage ``class_weight * CE + mask_weight * BCE + dice_weight * Dice``: CE over ``num_classes + 1``
  with weight ``no_object_weight`` (0.1) on the no-object class for unmatched queries, BCE (mean over
  voxels / points) and Dice ``1 - (2 sum(sigmoid(m) t) + 1) / (sum sigmoid(m) + sum t + 1)`` on matched
  pairs, each summed over pairs and divided by the number of ground-truth masks in the batch (averaged
  over the processes of a DDP run, as Mask2Former).

Semantic segmentation as a set: every class present in a sample's label map (background included, it is a
class here) gives one ground-truth mask (:func:`semantic_targets`).

Mask terms are computed either

* **dense** (``num_points=None``): on every voxel of the stage's resolution. The full-resolution one-hot
  masks are downsampled to a coarser stage by **area averaging** (``avg_pool`` by the integer factor), so
  coarse stages see *soft* targets (the fraction of each coarse voxel covered by the class); or
* **on points** (``num_points=P``): Mask2Former's ``point_sample`` generalised to 3D (``grid_sample``,
  bilinear / trilinear, ``align_corners=False``, coordinates in ``[0, 1]`` ordered
  ``(x, y[, z]) = (W, H[, D])``), with border padding (not Mask2Former's zeros; see :func:`point_sample`).
  The matcher uses ``P`` uniform points shared by the predictions and targets of a sample; the loss uses
  importance sampling (``oversample_ratio``, ``importance_sample_ratio``, uncertainty ``-|logit|``), with
  the ground truth sampled at the same normalised points from the full-resolution masks. Points are drawn
  from torch's global RNG of the logits' device, so ``torch.manual_seed`` makes a run reproducible.

With ``ignore_index`` (nnU-Net's ignore label) an ignored voxel is in no ground-truth mask and counts in no mask
term, in the matching cost and in the loss: each voxel (or point) carries the fraction ``w`` of it that is scored
(the area average of the scored map, or its point sample), the targets are the class fractions among the scored
voxels, BCE is the ``w``-weighted mean and Dice takes ``sum w sigmoid(m)``. A fully ignored voxel thus changes
nothing; at full resolution the terms are those of the scored voxels alone.

All loss arithmetic runs in fp32 with autocast disabled, whatever the logits' dtype.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from segfuse.kernels.utils import (FLOAT_DTYPES, INT_DTYPES, InputShapeError, InputTypeError, InputValueError,
                                   check_same, check_tensor)

Target = Tuple[torch.Tensor, torch.Tensor]  # (labels [G] int64, masks [G, *S] float32)


# ----------------------------------------------------------------------------- helpers
def _mean_over_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over the processes of a DDP run (Mask2Former normalises the mask terms by the
    batch's ground-truth masks averaged over ranks); ``value`` itself in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _check_label_range(name: str, target: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None) -> None:
    if ignore_index is not None:
        target = target[target != ignore_index]
    if target.numel() == 0:
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        other = "" if ignore_index is None else f" other than ignore_index={ignore_index}"
        raise InputValueError(f"{name} holds labels{other} outside [0, num_classes-1] = [0, {num_classes - 1}] "
                              f"(num_classes={num_classes}): found values in [{lo}, {hi}]")


def _strip_channel(target: torch.Tensor, spatial_dims: Optional[int], name: str = "target") -> torch.Tensor:
    """``[N, *S]`` or ``[N, 1, *S]`` integer label map -> ``[N, *S]``."""
    if spatial_dims is None:
        check_tensor(name, target, ndim=(3, 4, 5), dtypes=INT_DTYPES,
                     layout_hint="(N, *S) or (N, 1, *S) with 2 or 3 spatial dims")
        if target.dim() == 5 or (target.dim() == 4 and target.shape[1] == 1):
            if target.shape[1] != 1:
                raise InputShapeError(f"{name} of rank 5 must be (N, 1, D, H, W), got shape {tuple(target.shape)}")
            return target[:, 0]
        return target
    check_tensor(name, target, ndim=(spatial_dims + 1, spatial_dims + 2), dtypes=INT_DTYPES,
                 layout_hint=f"(N, *S) or (N, 1, *S) with {spatial_dims} spatial dims")
    if target.dim() == spatial_dims + 2:
        if target.shape[1] != 1:
            raise InputShapeError(f"{name} must be (N, *S) or (N, 1, *S) with {spatial_dims} spatial dims, "
                                  f"got shape {tuple(target.shape)} (channel dim {target.shape[1]} != 1)")
        return target[:, 0]
    return target


def _pool_factors(src: Sequence[int], dst: Sequence[int], what: str) -> Tuple[int, ...]:
    """Integer per-axis factors ``src / dst``; InputShapeError unless every ``dst`` size divides ``src``."""
    src, dst = tuple(int(s) for s in src), tuple(int(s) for s in dst)
    if len(src) != len(dst) or any(d <= 0 or s % d for s, d in zip(src, dst)):
        raise InputShapeError(f"{what}: spatial size {dst} must divide the target size {src} on every axis "
                              "(each stage is coarser than the label map by an integer factor)")
    return tuple(s // d for s, d in zip(src, dst))


def downsample_masks(masks: torch.Tensor, size: Sequence[int], what: str = "mask_logits") -> torch.Tensor:
    """Area-average ``masks [G, *S]`` (binary or soft) down to ``size`` by the integer factor ``S / size``.

    A coarse voxel gets the fraction of its block covered by the mask (soft target in ``[0, 1]``); identity
    at equal size.
    """
    factors = _pool_factors(masks.shape[1:], size, what)
    if all(f == 1 for f in factors):
        return masks
    pool = F.avg_pool3d if len(factors) == 3 else F.avg_pool2d
    return pool(masks.unsqueeze(0), kernel_size=factors, stride=factors).squeeze(0)


def point_sample(inp: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``inp [R, C, *S]`` (2 or 3 spatial dims) at ``coords [R, P, d]`` in ``[0, 1]`` -> ``[R, C, P]``.

    Coordinates are ordered ``(x, y[, z]) = (W, H[, D])`` as ``grid_sample`` reads them; bilinear (2D) /
    trilinear (3D), ``align_corners=False`` (Mask2Former's ``point_sample`` in 2D and 3D), but **border**
    padding where Mask2Former pads with zeros: points within half a voxel of the edge would otherwise blend
    logits and targets towards 0, which biases the small grids of coarse 3D stages (a third of an 8^3 grid
    lies in that shell).
    """
    r, p, d = coords.shape
    grid = (2.0 * coords - 1.0).reshape(r, p, *([1] * (d - 1)), d)
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(r, inp.shape[1], p)


def semantic_targets(target: torch.Tensor, num_classes: int, spatial_dims: Optional[int] = None,
                     ignore_index: Optional[int] = None) -> List[Target]:
    """Per sample, one binary mask per class present in its label map (background included).

    Args:
        target: ``[N, *S]`` or ``[N, 1, *S]`` integer label map, values in ``[0, num_classes - 1]``.
        num_classes: number of classes (background counted).
        spatial_dims: 2 or 3; when None it is inferred from the rank: rank 3 is ``(N, H, W)``, rank 5 is
            ``(N, 1, D, H, W)``, rank 4 is ``(N, 1, H, W)`` when ``shape[1] == 1`` else ``(N, D, H, W)``
            (pass ``spatial_dims`` to resolve a 3D volume with ``D == 1``).
        ignore_index: a label of no class (nnU-Net's ignore label): its voxels are in no mask.

    Returns:
        list of length N of ``(labels, masks)``: ``labels`` int64 ``[G]`` (ascending class ids present),
        ``masks`` float32 ``[G, *S]`` with ``masks[g] = (target == labels[g])``, on ``target``'s device.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputValueError(f"num_classes must be a positive int, got {num_classes!r}")
    t = _strip_channel(target, spatial_dims)
    _check_label_range("target", t, num_classes, ignore_index)
    out = []
    for b in range(t.shape[0]):
        tb = t[b].long()
        kept = tb.flatten() if ignore_index is None else tb.flatten()[tb.flatten() != ignore_index]
        present = torch.bincount(kept, minlength=num_classes) > 0
        labels = present.nonzero().flatten()
        masks = (tb.unsqueeze(0) == labels.view(-1, *([1] * tb.dim()))).float()
        out.append((labels, masks))
    return out


def solve_assignment(cost: torch.Tensor, name: str = "cost") -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of a ``[Q, G]`` cost matrix (``scipy.optimize.linear_sum_assignment``).

    ``min(Q, G)`` pairs are returned as int64 CPU tensors ``(pred_idx, gt_idx)`` sorted by ``pred_idx``; Q may
    be smaller or larger than G. A cost holding NaN or inf raises InputValueError.
    """
    c = cost.detach().to("cpu", torch.float64)
    if not torch.isfinite(c).all():
        bad = int((~torch.isfinite(c)).sum())
        raise InputValueError(f"{name} holds {bad} non-finite (NaN/inf) entries of {c.numel()}; the Hungarian "
                              "matching needs finite costs: check class_logits / mask_logits for NaN/inf")
    rows, cols = linear_sum_assignment(c.numpy())
    return (torch.as_tensor(np.asarray(rows), dtype=torch.int64),
            torch.as_tensor(np.asarray(cols), dtype=torch.int64))


def _check_weights(**weights) -> None:
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w < 0:
            raise InputValueError(f"{name} must be a finite number >= 0, got {w!r}")


def _check_num_points(num_points) -> Optional[int]:
    if num_points is None:
        return None
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise InputValueError(f"num_points must be None (dense) or a positive int, got {num_points!r}")
    return num_points


def _check_logits(class_logits, mask_logits, cname: str, mname: str,
                  spatial_dims: Optional[int] = None) -> Tuple[int, int, int]:
    """class ``[N, Q, C]`` and mask ``[N, Q, *S]`` logits of one stage; returns ``(N, Q, spatial_dims)``."""
    check_tensor(cname, class_logits, ndim=3, dtypes=FLOAT_DTYPES, layout_hint="(N, Q, num_classes + 1)")
    ranks = (4, 5) if spatial_dims is None else (spatial_dims + 2,)
    check_tensor(mname, mask_logits, ndim=ranks, dtypes=FLOAT_DTYPES,
                 layout_hint="(N, Q, *S) with " + ("2 or 3" if spatial_dims is None else str(spatial_dims))
                 + " spatial dims (same as the final stage)")
    check_same(mname, mask_logits, cname, class_logits, dtype=False)
    if tuple(mask_logits.shape[:2]) != tuple(class_logits.shape[:2]):
        raise InputShapeError(f"{mname} must be (N, Q, *S) with (N, Q) = {tuple(class_logits.shape[:2])} as "
                              f"{cname}, got shape {tuple(mask_logits.shape)}")
    return class_logits.shape[0], class_logits.shape[1], mask_logits.dim() - 2


def _check_targets(targets, n: int, spatial_dims: int, num_columns: int) -> List[Target]:
    if isinstance(targets, torch.Tensor) or not isinstance(targets, Sequence) or len(targets) != n:
        got = f"a {type(targets).__name__}" + (f" of length {len(targets)}" if isinstance(targets, Sequence) else "")
        raise InputTypeError(f"targets must be a list of N={n} (labels [G], masks [G, *S]) pairs "
                             f"(see semantic_targets), got {got}")
    out = []
    for b, tb in enumerate(targets):
        if isinstance(tb, Mapping):
            tb = (tb.get("labels"), tb.get("masks"))
        if not isinstance(tb, Sequence) or len(tb) != 2:
            raise InputTypeError(f"targets[{b}] must be a (labels, masks) pair, got {type(tb).__name__}")
        labels, masks = tb
        check_tensor(f"targets[{b}] labels", labels, ndim=1, dtypes=INT_DTYPES, layout_hint="(G,)")
        check_tensor(f"targets[{b}] masks", masks, ndim=spatial_dims + 1, dtypes=FLOAT_DTYPES + (torch.bool,),
                     layout_hint=f"(G, *S) with {spatial_dims} spatial dims")
        if masks.shape[0] != labels.shape[0]:
            raise InputShapeError(f"targets[{b}] masks must be (G, *S) with G = {labels.shape[0]} labels, "
                                  f"got shape {tuple(masks.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_columns - 1):
            raise InputValueError(f"targets[{b}] labels must lie in [0, {num_columns - 2}] (class_logits has "
                                  f"{num_columns} columns, the last is no-object), got values in "
                                  f"[{int(labels.min())}, {int(labels.max())}]")
        out.append((labels, masks))
    return out


def scored_fraction(target: torch.Tensor, ignore_index: Optional[int], spatial_dims: int) -> Optional[torch.Tensor]:
    """``[N, *S]`` fp32: 1 where the label map is scored, 0 at ``ignore_index`` (None without one)."""
    if ignore_index is None:
        return None
    return (_strip_channel(target, spatial_dims) != ignore_index).float()


# ----------------------------------------------------------------------------- matcher
class HungarianMatcher(nn.Module):
    """Bipartite matching of predicted (class, mask) pairs to ground-truth masks (Mask2Former's matcher).

    Cost of query ``q`` for ground truth ``g`` (class ``c_g``, mask ``t_g``):
    ``class_weight * (-softmax(class_q)[c_g]) + mask_weight * mean BCE_with_logits(m_q, t_g)
    + dice_weight * (1 - (2 sum(sigmoid(m_q) t_g) + 1) / (sum sigmoid(m_q) + sum t_g + 1))``,
    over every voxel of the prediction (``num_points=None``; ground-truth masks finer than the prediction
    are area-averaged down to it by an integer factor) or over ``num_points`` uniform random points shared
    by the sample's predictions and ground truth (``grid_sample``). Solved per sample with
    ``scipy.optimize.linear_sum_assignment`` on the fp64 CPU cost; runs under ``torch.no_grad``.
    """

    def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 num_points: Optional[int] = None):
        super().__init__()
        _check_weights(class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight)
        self.class_weight, self.mask_weight, self.dice_weight = float(class_weight), float(mask_weight), \
            float(dice_weight)
        self.num_points = _check_num_points(num_points)

    @torch.no_grad()
    def cost_matrices(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                      targets: Sequence[Target], scored: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Per sample the fp32 cost ``[Q, G_b]`` (see the class docstring).

        Args:
            class_logits: ``[N, Q, K + 1]`` (last column no-object).
            mask_logits: ``[N, Q, *S_pred]``, 2 or 3 spatial dims.
            targets: N pairs ``(labels [G_b] int, masks [G_b, *S])`` (:func:`semantic_targets`); in dense
                mode ``S`` must be ``S_pred`` times integer factors.
            scored: ``[N, *S]`` fp32, 1 where the label map is scored (:func:`scored_fraction`), or None: the
                mask terms then weigh each voxel / point by its scored fraction (module docstring).
        """
        n, _, d = _check_logits(class_logits, mask_logits, "class_logits", "mask_logits")
        targets = _check_targets(targets, n, d, class_logits.shape[-1])
        costs = []
        with _no_autocast(mask_logits.device):
            prob = class_logits.float().softmax(-1)  # [N, Q, K+1]
            for b, (labels, masks) in enumerate(targets):
                check_same(f"targets[{b}] masks", masks, "mask_logits", mask_logits, dtype=False)
                logits = mask_logits[b].float()  # [Q, *S_pred]
                tgt = masks.float()
                w = None
                if self.num_points is None:
                    tgt = downsample_masks(tgt, logits.shape[1:], f"mask_logits (sample {b})")
                    x, t = logits.flatten(1), tgt.flatten(1)  # [Q, V], [G, V]
                    if scored is not None:
                        w = downsample_masks(scored[b][None], logits.shape[1:], "mask_logits").flatten(1)  # [1, V]
                else:
                    coords = torch.rand(1, self.num_points, d, device=logits.device)
                    x = point_sample(logits.unsqueeze(0), coords)[0]  # [Q, P]
                    t = point_sample(tgt.unsqueeze(0), coords)[0]  # [G, P]
                    if scored is not None:
                        w = point_sample(scored[b][None, None], coords)[0]  # [1, P]
                cost_class = -prob[b][:, labels.long()]  # [Q, G]
                # BCE(x, t) = softplus(x) - x t (exact for soft t too): mean over voxels without a [Q, G, V] tensor;
                # with scored fractions w and targets t = w t' (t' among the scored voxels): sum w BCE(x, t') / sum w
                s = x.sigmoid()
                if w is None:
                    cost_bce = (F.softplus(x).sum(1, keepdim=True) - x @ t.t()) / x.shape[1]
                    s_sum = s.sum(1)
                else:
                    cost_bce = ((F.softplus(x) * w).sum(1, keepdim=True) - x @ t.t()) / w.sum().clamp_min(1e-12)
                    s_sum = (s * w).sum(1)
                cost_dice = 1.0 - (2.0 * (s @ t.t()) + 1.0) / (s_sum[:, None] + t.sum(1)[None, :] + 1.0)
                costs.append(self.class_weight * cost_class + self.mask_weight * cost_bce
                             + self.dice_weight * cost_dice)
        return costs

    @torch.no_grad()
    def forward(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                targets: Sequence[Target], scored: Optional[torch.Tensor] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per sample ``(pred_idx, gt_idx)``: int64 CPU tensors of length ``min(Q, G_b)``, ``pred_idx`` sorted,
        ``gt_idx`` indexing the sample's ``labels`` / ``masks``. Shapes as :meth:`cost_matrices`."""
        return [solve_assignment(c, name=f"matching cost of sample {b}")
                for b, c in enumerate(self.cost_matrices(class_logits, mask_logits, targets, scored))]


# ----------------------------------------------------------------------------- criterion
# With scored fractions w, the targets t are coverages (the class's share of all voxels, t <= w), i.e. w times the
# class fraction t' among the scored voxels: sum w s t' = sum s t and sum w t' = sum t, and BCE being linear in
# its target, sum w BCE(x, t') = sum w softplus(x) - sum x t. The matcher's cost uses the same forms.
def _dice_loss(x: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over rows of ``1 - (2 sum(sigmoid(x) t) + 1) / (sum sigmoid(x) + sum t + 1)``; ``x, t: [M, V]``; with
    scored fractions ``w [M, V]`` the prediction's sum is ``sum w sigmoid(x)``."""
    s = x.sigmoid()
    s_sum = s.sum(1) if w is None else (s * w).sum(1)
    return (1.0 - (2.0 * (s * t).sum(1) + 1.0) / (s_sum + t.sum(1) + 1.0)).sum()


def _bce_loss(x: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over rows of the mean BCE-with-logits over columns; ``x, t: [M, V]``; with scored fractions ``w`` the
    ``w``-weighted mean of BCE against the class fractions among the scored voxels (a row with nothing scored:
    0)."""
    if w is None:
        return F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1).sum()
    return (((F.softplus(x) * w).sum(1) - (x * t).sum(1)) / w.sum(1).clamp_min(1e-12)).sum()


class MaskMedCriterion(nn.Module):
    """MaskMed set loss over the decoder stages, with one Hungarian matching at the final stage.

    Args:
        num_classes: K, classes of the label map (background included); class logits have K + 1 columns.
        no_object_weight: CE weight of the no-object class (index K); buffer ``empty_weight`` =
            ``(1, ..., 1, no_object_weight)`` (non-persistent: not part of ``state_dict``).
        class_weight, mask_weight, dice_weight: weights of CE / mask BCE / Dice, in the matching cost and in
            the loss (Mask2Former 2 / 5 / 5).
        num_points: None for dense mask terms at each stage's resolution (targets area-averaged to it), or
            the number of points for the matcher (uniform) and the loss (importance sampled).
        oversample_ratio, importance_sample_ratio: Mask2Former's importance sampling (points mode only):
            ``oversample_ratio * num_points`` uniform candidates, the ``importance_sample_ratio * num_points``
            most uncertain (``-|logit|``) kept, the rest uniform.
        stage_weights: per-stage weights (coarse -> fine), default 1.0 for every stage, as Mask2Former
            weighs its auxiliary outputs like the final one.
        ignore_index: nnU-Net's ignore label (a label value of no class), or None: its voxels are in no
            ground-truth mask and count in no mask term (module docstring).

    Forward:
        outputs: ``{"class_logits": [(N, Q, K+1)] * L, "mask_logits": [(N, Q, *S_l)] * L}``, coarse -> fine,
            the last entry being the final stage (the one matched).
        target: ``(N, *S)`` or ``(N, 1, *S)`` integer label map; every ``S_l`` divides ``S`` on each axis.
        Returns a scalar fp32 tensor: ``sum_l w_l * (class_weight * CE_l + mask_weight * BCE_l +
        dice_weight * Dice_l)``, with BCE_l / Dice_l summed over matched pairs and divided by the number of
        ground-truth masks in the batch (no all-reduce across processes).
    """

    def __init__(self, num_classes: int, no_object_weight: float = 0.1, class_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0, num_points: Optional[int] = None,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 stage_weights: Optional[Sequence[float]] = None, ignore_index: Optional[int] = None):
        super().__init__()
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
                                         or 0 <= ignore_index < num_classes):
            raise InputValueError(f"ignore_index must be None or an int label value outside the classes "
                                  f"[0, {num_classes - 1}], got {ignore_index!r}")
        self.ignore_index = ignore_index
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise InputValueError(f"num_classes must be a positive int, got {num_classes!r}")
        _check_weights(no_object_weight=no_object_weight, class_weight=class_weight, mask_weight=mask_weight,
                       dice_weight=dice_weight)
        if not isinstance(oversample_ratio, (int, float)) or oversample_ratio < 1:
            raise InputValueError(f"oversample_ratio must be >= 1, got {oversample_ratio!r}")
        if not isinstance(importance_sample_ratio, (int, float)) or not 0 <= importance_sample_ratio <= 1:
            raise InputValueError(f"importance_sample_ratio must lie in [0, 1], got {importance_sample_ratio!r}")
        if stage_weights is not None:
            stage_weights = tuple(stage_weights)
            if not stage_weights:
                raise InputValueError("stage_weights must be None or hold one weight per stage, got an empty list")
            _check_weights(**{f"stage_weights[{i}]": w for i, w in enumerate(stage_weights)})
            stage_weights = tuple(float(w) for w in stage_weights)
        self.num_classes = num_classes
        self.class_weight, self.mask_weight, self.dice_weight = float(class_weight), float(mask_weight), \
            float(dice_weight)
        self.num_points = _check_num_points(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.stage_weights = stage_weights
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    # -------------------------------------------------------------------------------- input checks
    def _check_outputs(self, outputs, target):
        if not isinstance(outputs, Mapping):
            raise InputTypeError(f"outputs must be a dict with 'class_logits' and 'mask_logits' lists, "
                                 f"got {type(outputs).__name__}")
        missing = [k for k in ("class_logits", "mask_logits") if k not in outputs]
        if missing:
            raise InputValueError(f"outputs must hold 'class_logits' and 'mask_logits', missing {missing}; "
                                  f"got keys {list(outputs.keys())}")
        stages = []
        for key in ("class_logits", "mask_logits"):
            v = outputs[key]
            v = [v] if isinstance(v, torch.Tensor) else v
            if not isinstance(v, Sequence) or len(v) == 0:
                raise InputShapeError(f"outputs['{key}'] must be a non-empty list of per-stage tensors "
                                      f"(coarse -> fine), got {type(v).__name__}"
                                      + (" of length 0" if isinstance(v, Sequence) else ""))
            stages.append(list(v))
        cls, msk = stages
        if len(cls) != len(msk):
            raise InputShapeError(f"outputs['class_logits'] and outputs['mask_logits'] must list the same number "
                                  f"of stages, got {len(cls)} and {len(msk)}")
        n_st = len(cls)
        n, q, d = _check_logits(cls[-1], msk[-1], f"class_logits[{n_st - 1}]", f"mask_logits[{n_st - 1}]")
        if q < 1:
            raise InputShapeError(f"class_logits[{n_st - 1}] must hold at least one query (N, Q >= 1, K + 1), "
                                  f"got shape {tuple(cls[-1].shape)}")
        k1 = self.num_classes + 1
        for s in range(n_st):
            _check_logits(cls[s], msk[s], f"class_logits[{s}]", f"mask_logits[{s}]", spatial_dims=d)
            if tuple(cls[s].shape) != (n, q, k1):
                raise InputShapeError(f"class_logits[{s}] must have shape (N, Q, num_classes + 1) = ({n}, {q}, {k1}) "
                                      f"(last dim num_classes + 1 = {k1}, N and Q as the final stage), "
                                      f"got {tuple(cls[s].shape)}")
            check_same(f"mask_logits[{s}]", msk[s], f"mask_logits[{n_st - 1}]", msk[-1], dtype=False)
        t = _strip_channel(target, d)
        check_same("target", t, f"mask_logits[{n_st - 1}]", msk[-1], dtype=False)
        if t.shape[0] != n:
            raise InputShapeError(f"target must have N = {n} samples as the logits, got shape {tuple(target.shape)}")
        for s in range(n_st):
            _pool_factors(t.shape[1:], msk[s].shape[2:], f"mask_logits[{s}] of shape {tuple(msk[s].shape)}")
        if self.stage_weights is not None and len(self.stage_weights) != n_st:
            raise InputValueError(f"stage_weights holds {len(self.stage_weights)} weights but outputs hold "
                                  f"{n_st} stages")
        return cls, msk, t, d

    # -------------------------------------------------------------------------------- point sampling
    def _importance_points(self, logits: torch.Tensor, d: int) -> torch.Tensor:
        """Mask2Former's ``get_uncertain_point_coords_with_randomness``: ``logits [M, 1, *S]`` -> ``[M, P, d]``."""
        m, p = logits.shape[0], self.num_points
        n_over = max(int(p * self.oversample_ratio), p)
        n_unc = int(self.importance_sample_ratio * p)
        coords = torch.rand(m, n_over, d, device=logits.device)
        if n_unc > 0:
            uncertainty = -point_sample(logits, coords)[:, 0].abs()  # [M, n_over]
            idx = uncertainty.topk(n_unc, dim=1).indices  # [M, n_unc]
            coords_unc = coords.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
        else:
            coords_unc = coords[:, :0]
        coords_rand = torch.rand(m, p - n_unc, d, device=logits.device)
        return torch.cat([coords_unc, coords_rand], dim=1)

    # -------------------------------------------------------------------------------- loss
    def loss_terms(self, outputs, target: torch.Tensor) -> dict:
        """Unweighted per-stage terms ``{"ce": [L], "bce": [L], "dice": [L]}`` (fp32 scalars, coarse -> fine)
        and the assignment ``"indices"`` (list per sample of ``(pred_idx, gt_idx)``). Arguments as forward."""
        cls, msk, t, d = self._check_outputs(outputs, target)
        device = msk[-1].device
        n, q = cls[-1].shape[:2]
        targets = semantic_targets(t, self.num_classes, spatial_dims=d, ignore_index=self.ignore_index)
        scored = scored_fraction(t, self.ignore_index, d)  # [N, *S] or None
        indices = self.matcher(cls[-1], msk[-1], targets, scored)  # once, at the final stage

        # matched pairs over the batch: query (b, pred) <-> row of the concatenated GT masks
        batch_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)]).to(device)
        pred_idx = torch.cat([p for p, _ in indices]).to(device)
        offsets = np.cumsum([0] + [lab.numel() for lab, _ in targets])
        gt_rows = torch.cat([g + int(offsets[b]) for b, (_, g) in enumerate(indices)]).to(device)
        all_labels = torch.cat([lab for lab, _ in targets])
        all_masks = torch.cat([m for _, m in targets])  # [G_total, *S] float32
        matched_masks = all_masks[gt_rows]  # [M, *S]
        num_masks = max(_mean_over_ranks(float(offsets[-1]), device), 1.0)

        target_classes = torch.full((n, q), self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, pred_idx] = all_labels[gt_rows]
        weight = self.empty_weight.to(device=device, dtype=torch.float32)

        ce, bce, dice = [], [], []
        with _no_autocast(device):
            for s in range(len(cls)):
                logits_c = cls[s].float()  # [N, Q, K+1]
                ce.append(F.cross_entropy(logits_c.transpose(1, 2), target_classes, weight=weight))
                src = msk[s][batch_idx, pred_idx].float()  # [M, *S_s]
                if src.shape[0] == 0:
                    zero = msk[s].float().sum() * 0.0
                    bce.append(zero)
                    dice.append(zero)
                    continue
                w = None
                if self.num_points is None:
                    tgt = downsample_masks(matched_masks, src.shape[1:], f"mask_logits[{s}]")
                    x, y = src.flatten(1), tgt.flatten(1)
                    if scored is not None:
                        w = downsample_masks(scored[batch_idx], src.shape[1:], f"mask_logits[{s}]").flatten(1)
                else:
                    with torch.no_grad():
                        coords = self._importance_points(src.detach().unsqueeze(1), d)
                        y = point_sample(matched_masks.unsqueeze(1), coords)[:, 0]  # GT at full resolution
                        if scored is not None:
                            w = point_sample(scored[batch_idx].unsqueeze(1), coords)[:, 0]
                    x = point_sample(src.unsqueeze(1), coords)[:, 0]
                bce.append(_bce_loss(x, y, w) / num_masks)
                dice.append(_dice_loss(x, y, w) / num_masks)
        return {"ce": ce, "bce": bce, "dice": dice, "indices": indices}

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """Scalar fp32 loss; see the class docstring for ``outputs`` / ``target``."""
        terms = self.loss_terms(outputs, target)
        n_st = len(terms["ce"])
        weights = self.stage_weights if self.stage_weights is not None else (1.0,) * n_st
        total = None
        for w, c, b, dc in zip(weights, terms["ce"], terms["bce"], terms["dice"]):
            stage = w * (self.class_weight * c + self.mask_weight * b + self.dice_weight * dc)
            total = stage if total is None else total + stage
        return total


__all__ = ["semantic_targets", "HungarianMatcher", "MaskMedCriterion", "solve_assignment", "point_sample",
           "downsample_masks"]
