"""DilateFormer encoder (Jiao et al., IEEE TMM 2023; ``JIAOJIAYUASD/dilateformer: models/dilateformer.py``)
as the global branch of FIAS: real Multi-Scale Dilated Attention (MSDA) in stages 1-2, global multi-head
self-attention in stages 3-4.

MSDA without the unfolded keys and values
-----------------------------------------
The released ``DilateAttention`` unfolds k and v with ``nn.Unfold(3, dilation=r, padding=r)``: a
``(B, C, 9, H, W)`` copy of each. :func:`dilated_attention` computes the same thing offset by offset:
k and v are zero-padded by ``r * (k // 2)`` once, and for each of the ``k^2`` offsets ``o`` a strided view
``shift_o(k)`` (no copy) gives the logit map ``(q . shift_o(k)) * scale`` of shape ``(B, heads, H, W)``;
softmax over the ``k^2`` stacked logits, then ``out = sum_o attn_o * shift_o(v)``. Out-of-image keys are
zero vectors (logit 0, value 0) and stay in the softmax, exactly as the zero padding of ``nn.Unfold`` makes
them. Extra memory is ``k^2`` logit maps (``9 / head_dim`` of a feature map) instead of two 9x copies.

NATTEN was tried as the neighbourhood-attention backend and not used: its CPU path (flex attention)
only takes power-of-two head dims (DilateFormer-tiny has 24) and its windows shift inward at the
border instead of zero padding, which is a different operator from DilateFormer's.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels.utils import InputValueError


def dilated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dilation: int, kernel_size: int = 3,
                      scale: Optional[float] = None) -> torch.Tensor:
    """Sliding-window attention over a ``kernel_size^2`` neighbourhood sampled with ``dilation``.

    ``q, k, v (B, heads, head_dim, H, W)`` -> ``(B, heads, head_dim, H, W)``; zero padding as
    ``nn.Unfold(kernel_size, dilation, padding=dilation * (kernel_size // 2))``; ``scale`` defaults to
    ``head_dim ** -0.5``.
    """
    B, h, d, H, W = q.shape
    scale = d ** -0.5 if scale is None else scale
    p = dilation * (kernel_size // 2)
    k = F.pad(k, (p, p, p, p))  # (B, h, d, H + 2p, W + 2p)
    v = F.pad(v, (p, p, p, p))
    offsets = [(i * dilation, j * dilation) for i in range(kernel_size) for j in range(kernel_size)]
    q = q * scale
    # (B, h, K^2, H, W): one logit map per neighbour, Unfold's (row, col) order
    logits = torch.stack([(q * k[..., i:i + H, j:j + W]).sum(2) for i, j in offsets], dim=2)
    attn = logits.softmax(dim=2)
    out = None
    for n, (i, j) in enumerate(offsets):
        term = attn[:, :, n:n + 1] * v[..., i:i + H, j:j + W]
        out = term if out is None else out + term
    return out


class MultiScaleDilatedAttention(nn.Module):
    """MSDA (released ``MultiDilatelocalAttention``): qkv 1x1 conv C -> 3C; channels and heads split into
    ``len(dilations)`` groups; group g attends a 3x3 neighbourhood at dilation ``dilations[g]``; groups
    concatenated -> Linear proj. Input and output ``(B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, dilations: Sequence[int] = (1, 2, 3), kernel_size: int = 3,
                 qkv_bias: bool = True):
        super().__init__()
        G = len(dilations)
        if num_heads % G or dim % num_heads:
            raise InputValueError(f"MSDA: num_heads ({num_heads}) must be a multiple of len(dilations) ({G}) and "
                                  f"divide dim ({dim})")
        self.dim, self.num_heads, self.dilations, self.kernel_size = dim, num_heads, tuple(dilations), kernel_size
        self.head_dim = dim // num_heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        G = len(self.dilations)
        hg = self.num_heads // G
        # (3, G, B, heads/G, head_dim, H, W): qkv channels are [q | k | v], each split into G contiguous groups
        qkv = self.qkv(x.permute(0, 3, 1, 2)).reshape(B, 3, G, hg, self.head_dim, H, W).permute(1, 2, 0, 3, 4, 5, 6)
        outs = [dilated_attention(qkv[0, g], qkv[1, g], qkv[2, g], r, self.kernel_size)
                for g, r in enumerate(self.dilations)]
        out = torch.cat(outs, dim=1).reshape(B, C, H, W).permute(0, 2, 3, 1)
        return self.proj(out)


class GlobalAttention(nn.Module):
    """Global multi-head self-attention (released ``GlobalAttention``) through
    ``F.scaled_dot_product_attention``; input and output ``(B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise InputValueError(f"GlobalAttention: num_heads ({num_heads}) must divide dim ({dim})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample; the branch stays in the graph (zero grads, never missing ones)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class DilateBlock(nn.Module):
    """DilateFormer block (released ``DilateBlock`` / ``GlobalBlock``): ``x + CPE(x)`` (depthwise 3x3 with
    bias), then pre-LN attention (MSDA or global) and pre-LN MLP residuals. Input / output ``(B, C, H, W)``."""

    def __init__(self, dim: int, num_heads: int, dilated: bool, dilations: Sequence[int] = (1, 2, 3),
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = (MultiScaleDilatedAttention(dim, num_heads, dilations) if dilated
                     else GlobalAttention(dim, num_heads))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)
        return x.permute(0, 3, 1, 2)


class OverlapStem(nn.Sequential):
    """Released "overlaping" patch embedding, stride 4: conv3x3 (C_in -> h) s1, BN, GELU, conv3x3 (h -> 2h)
    s2, BN, GELU, conv3x3 (2h -> 4h) s1, BN, GELU, conv3x3 (4h -> embed) s2; no bias."""

    def __init__(self, in_channels: int, embed_dim: int, hidden: int = 16):
        layers: List[nn.Module] = []
        chans = (in_channels, hidden, 2 * hidden, 4 * hidden)
        for i in range(3):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 + i % 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
        layers.append(nn.Conv2d(chans[3], embed_dim, 3, stride=2, padding=1, bias=False))
        super().__init__(*layers)


class PatchMerging(nn.Sequential):
    """Released ``PatchMerging`` "conv3_2": conv3x3 stride 2 (with bias) -> BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.BatchNorm2d(out_channels))


class DilateFormerEncoder(nn.Module):
    """DilateFormer backbone returning the four stage outputs (before patch merging) at strides 4, 8, 16, 32
    with widths ``embed_dim * (1, 2, 4, 8)``.

    Stem (stride 4) -> stage 1 (MSDA) -> merge -> stage 2 (MSDA) -> merge -> stage 3 (global) -> merge ->
    stage 4 (global). Defaults = DilateFormer-tiny (embed 72, depths 2/2/6/2, heads 3/6/12/24, MLP ratio 4,
    LayerNorm eps 1e-6, CPE per block, qkv bias). No classification norm / head. Linear weights init
    trunc-normal(0.02) with zero bias, LayerNorm 1/0 (released ``_init_weights``).

    Args:
        in_channels: input channels.
        embed_dim, depths, num_heads, dilations, mlp_ratio: as DilateFormer; stage i uses MSDA where
            ``dilated[i]``.
        stem_hidden: hidden width of the stem (16).
        drop_path_rate: stochastic depth, linearly increasing over the blocks (ImageNet recipe 0.1;
            default 0 here).
    """

    def __init__(self, in_channels: int, embed_dim: int = 72, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), dilations: Sequence[int] = (1, 2, 3),
                 dilated: Sequence[bool] = (True, True, False, False), mlp_ratio: float = 4.0,
                 stem_hidden: int = 16, drop_path_rate: float = 0.0):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4 or len(dilated) != 4:
            raise InputValueError(f"DilateFormerEncoder: depths, num_heads and dilated need 4 entries, got "
                                  f"{tuple(depths)}, {tuple(num_heads)}, {tuple(dilated)}")
        self.channels = tuple(embed_dim * 2 ** i for i in range(4))
        self.stem = OverlapStem(in_channels, embed_dim, stem_hidden)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # torch.linspace(0, rate, n), host-side
        self.stages = nn.ModuleList()
        start = 0
        for i, dim in enumerate(self.channels):
            self.stages.append(nn.Sequential(*[
                DilateBlock(dim, num_heads[i], bool(dilated[i]), dilations, mlp_ratio, dpr[start + j])
                for j in range(depths[i])]))
            start += depths[i]
        self.merges = nn.ModuleList(PatchMerging(self.channels[i], self.channels[i + 1]) for i in range(3))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats.append(x)
            if i < 3:
                x = self.merges[i](x)
        return feats
