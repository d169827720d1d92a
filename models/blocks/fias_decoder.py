"""FIAS fusion and decoder (Liu, Xu, Ho, ISBI 2025, eqs. 3-10), following the first author's scaffold
(``Xiwei-web/FIAS: fias/models/fusion/caf.py``, ``decoders/mixatt_decoder.py``, ``decoders/mhsa.py``):

* :class:`ContextAwareFusion` (CAF): ``concat(local, global)`` -> 1x1 conv -> channel gate -> spatial gate
  -> Conv3x3-BN-ReLU.
* :class:`MixAttention`: ``x + MHSA(x) + MCA(x)`` -> Conv3x3-BN-ReLU, with MCA the fused
  :class:`~segfuse.kernels.MonteCarloAttention` (which returns ``x * gate``).
* :class:`MixAttBlock`: upsample + skip concat -> two convs -> :class:`MixAttention`.
* :class:`MixAttDecoder`: a bridge (Conv3x3-BN-ReLU + :class:`MixAttention`) on the deepest fused map, then
  one MixAtt block per skip (the scaffold's bridge has no attention; FIAS's heads 8/6/4/2 name four levels).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels import MonteCarloAttention
from segfuse.kernels.utils import InputValueError, upsample_to

from .dmk import ConvBNReLU


def head_count(width: int, max_heads: int) -> int:
    """The largest divisor of ``width`` that is at most ``max_heads`` (``max_heads`` itself when it divides)."""
    return max(h for h in range(1, max(1, min(max_heads, width)) + 1) if width % h == 0)


class ContextAwareFusion(nn.Module):
    """CAF: ``f = conv1x1(concat(local, global))`` (C_l + C_g -> C, no bias); ``f = f * channel_gate(f)`` with
    ``sigmoid(mlp(avgpool f) + mlp(maxpool f))`` (shared 1x1 convs C -> max(C/2, 8) -> C with bias, ReLU);
    ``f = f * sigmoid(conv1x1_{C->1}(f))`` (spatial gate); ``Conv3x3-BN-ReLU(f)``.

    The concat -> 1x1 conv is also the width projection: the two branches may differ in width (FIAS: DMK
    32..256 and DilateFormer 72..576), so no separate projection layer is needed (it would compose with
    this one into the same linear map). The scaffold pools only the average for the channel gate; the paper
    (and this module) uses average and max.
    """

    def __init__(self, local_channels: int, global_channels: int, out_channels: int):
        super().__init__()
        hidden = max(out_channels // 2, 8)
        self.reduce = nn.Conv2d(local_channels + global_channels, out_channels, 1, bias=False)
        self.fc1 = nn.Conv2d(out_channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, out_channels, 1)
        self.spatial = nn.Conv2d(out_channels, 1, 1)
        self.out = ConvBNReLU(out_channels, out_channels, 3)

    def channel_gate(self, f: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, 1, 1)``."""
        mlp = lambda t: self.fc2(F.relu(self.fc1(t)))  # noqa: E731
        return torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))

    def forward(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        f = self.reduce(torch.cat((local, glob), dim=1))
        f = f * self.channel_gate(f)
        f = f * torch.sigmoid(self.spatial(f))
        return self.out(f)


class TokenMHSA(nn.Module):
    """The decoder's global self-attention (scaffold ``SpatialMHSA``): LayerNorm over the flattened
    ``H*W`` tokens, ``nn.MultiheadAttention``-shaped projections (qkv and out Linear with bias) around
    ``F.scaled_dot_product_attention``; no positional encoding, no residual (the block adds x).
    ``(N, C, H, W)`` -> ``(N, C, H, W)``."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise InputValueError(f"TokenMHSA: num_heads ({num_heads}) must divide channels ({channels})")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        t = self.norm(x.flatten(2).transpose(1, 2))  # (N, HW, C)
        qkv = self.qkv(t).reshape(N, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, HW, C / heads)
        out = self.proj(out.transpose(1, 2).reshape(N, H * W, C))
        return out.transpose(1, 2).reshape(N, C, H, W)


class MixAttention(nn.Module):
    """Eqs. 7-10: ``mixed = x + MHSA(x) + MCA(x)``, then Conv3x3-BN-ReLU; MCA is the fused
    :class:`~segfuse.kernels.MonteCarloAttention` (it returns ``x * gate``). ``(N, C, H, W)`` -> same."""

    def __init__(self, channels: int, num_heads: int, mca_variant: str = "channel",
                 mca_pool_sizes: Sequence[int] = (1, 2, 3)):
        super().__init__()
        self.mhsa = TokenMHSA(channels, num_heads)
        self.mca = MonteCarloAttention(2, channels, mca_pool_sizes, variant=mca_variant)
        self.out = ConvBNReLU(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.mhsa(x) + self.mca(x))


class MixAttBlock(nn.Module):
    """Upsample the deeper map to the skip's size (bilinear, ``align_corners=False``), concat the skip,
    Conv3x3-BN-ReLU -> Dropout2d -> Conv3x3-BN-ReLU = x; then :class:`MixAttention`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_heads: int,
                 mca_variant: str = "channel", mca_pool_sizes: Sequence[int] = (1, 2, 3), dropout: float = 0.1):
        super().__init__()
        self.pre = nn.Sequential(ConvBNReLU(in_channels + skip_channels, out_channels, 3), nn.Dropout2d(dropout),
                                 ConvBNReLU(out_channels, out_channels, 3))
        self.mix = MixAttention(out_channels, num_heads, mca_variant, mca_pool_sizes)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.mix(self.pre(torch.cat((upsample_to(x, skip.shape[2:]), skip), dim=1)))


class MixAttDecoder(nn.Module):
    """Bridge (Conv3x3-BN-ReLU + :class:`MixAttention`) on the deepest map, then MixAtt blocks up to the
    shallowest skip: one mixing-attention stage per decoder level.

    Args:
        widths: fused widths, shallowest first (FIAS: 32, 64, 128, 256); block i (deep -> shallow) outputs
            the width of its skip.
        heads: maximum MHSA heads per decoder level, deep -> shallow (bridge first; FIAS 8/6/4/2); each level
            uses :func:`head_count` (the largest divisor of its width not above it).
        mca_variant, mca_pool_sizes, dropout: see :class:`MixAttBlock`.

    Forward: the fused maps, shallowest first -> ``[bridge, block_1, ..., block_n]`` (deep -> shallow).
    """

    def __init__(self, widths: Sequence[int], heads: Sequence[int], mca_variant: str = "channel",
                 mca_pool_sizes: Sequence[int] = (1, 2, 3), dropout: float = 0.1):
        super().__init__()
        widths = tuple(widths)
        if len(heads) != len(widths):
            raise InputValueError(f"MixAttDecoder: heads needs one entry per decoder level, bridge included "
                                  f"({len(widths)}), got {tuple(heads)}")
        deep = widths[::-1]
        self.num_heads = tuple(head_count(w, h) for w, h in zip(deep, heads))
        self.bridge = nn.Sequential(ConvBNReLU(deep[0], deep[0], 3),
                                    MixAttention(deep[0], self.num_heads[0], mca_variant, mca_pool_sizes))
        self.blocks = nn.ModuleList(
            MixAttBlock(deep[i], deep[i + 1], deep[i + 1], self.num_heads[i + 1], mca_variant, mca_pool_sizes,
                        dropout)
            for i in range(len(widths) - 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        x = self.bridge(feats[-1])
        outs = [x]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip)
            outs.append(x)
        return outs
