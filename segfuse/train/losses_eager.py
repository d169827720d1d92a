"""Eager Dice+CE losses: stand-ins used when ``segfuse.losses`` lacks an implementation.

``dice_ce(logits [N, K, *S], target [N, *S] int64)``: mean soft Dice loss over classes (softmax,
per sample, all classes incl. background, smooth 1e-5 as MONAI's DiceCELoss) + cross-entropy.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def upsample_to(logits: torch.Tensor, size) -> torch.Tensor:
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def dice_ce(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    logits = upsample_to(logits, target.shape[1:]).float()
    k = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1.0 - (2 * inter + smooth) / (denom + smooth)
    return dice.mean() + F.cross_entropy(logits, target)


class DeepSupervisionLoss(nn.Module):
    """Fixed-weight sum of ``dice_ce`` over maps (coarse -> fine); weights normalised to sum 1."""

    def __init__(self, raw_weights: Sequence[float]):
        super().__init__()
        w = torch.tensor(list(raw_weights), dtype=torch.float32)
        self.register_buffer("w", w / w.sum())

    def forward(self, logits_list: List[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return sum(wi * dice_ce(x, target) for wi, x in zip(self.w, logits_list))


class LearnedWeightLoss(nn.Module):
    """LoMix stand-in: ``sum_i w_i * dice_ce(map_i)`` over the maps and their pairwise sums,
    weights ``softplus(a) / sum softplus(a)`` learned with the network (``weights()``)."""

    def __init__(self, num_maps: int):
        super().__init__()
        self.num_maps = num_maps
        self.pairs = [(i, j) for i in range(num_maps) for j in range(i + 1, num_maps)]
        self.alpha = nn.Parameter(torch.zeros(num_maps + len(self.pairs)))
        self.names = [f"map{i}" for i in range(num_maps)] + [f"map{i}+map{j}" for i, j in self.pairs]

    def weights(self) -> torch.Tensor:
        w = F.softplus(self.alpha)
        return w / w.sum()

    def forward(self, logits_list, target):
        size = target.shape[1:]
        up = [upsample_to(x, size) for x in logits_list]
        maps = up + [up[i] + up[j] for i, j in self.pairs]
        w = self.weights()
        return sum(wi * dice_ce(m, target) for wi, m in zip(w, maps))
