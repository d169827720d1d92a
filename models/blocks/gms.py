"""LGMSNet's global multi-scale (GMS) block: MobileViT unfolding with a transformer : conv channel split."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels.utils import conv_type

from .common import ConvNormAct, NormSpec, get_norm


class Attention(nn.Module):
    """Pre-LN multi-head self-attention over the last-but-one axis of ``(..., N, dim)``.

    ``qkv`` Linear without bias, ``heads x dim_head`` inner width, output Linear with bias; no
    positional encoding (as released).
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 8, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(*lead, n, 3, self.heads, self.dim_head)
        q, k, v = qkv.movedim(-3, 0).transpose(-2, -3).unbind(0)  # each (..., heads, N, dim_head)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(-2, -3).reshape(*lead, n, self.heads * self.dim_head))


class FeedForward(nn.Sequential):
    """Pre-LN MLP: LayerNorm -> Linear(dim, hidden) -> SiLU -> Linear(hidden, dim)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class Transformer(nn.Module):
    """``depth`` x (x + Attention(x); x + FeedForward(x)) on ``(..., N, dim)`` tokens."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout), FeedForward(dim, mlp_dim, dropout)])
            for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class ConvBranch(nn.Sequential):
    """GMS conv branch (released ``DWConv2d_BN_ReLU``): depthwise kxk (no bias) -> BatchNorm -> ReLU ->
    per-channel 1x1 scale (groups=C, no bias) -> BatchNorm. BatchNorm in 2D and 3D, as released."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3):
        conv = conv_type(spatial_dims)
        super().__init__(
            conv(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            get_norm("batch", spatial_dims, channels), nn.ReLU(),
            conv(channels, channels, 1, groups=channels, bias=False),
            get_norm("batch", spatial_dims, channels))


def unfold_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, *spatial) -> (B, p^d, prod(spatial)/p^d, C)``: token set j holds every p-th pixel starting
    at offset j inside each ``p^d`` patch (MobileViT's ``b d (h ph) (w pw) -> b (ph pw) (h w) d``)."""
    b, c, *sp = x.shape
    d = len(sp)
    grid = [s // p for s in sp]
    shape = [b, c]
    for g in grid:
        shape += [g, p]
    x = x.reshape(shape)
    perm = [0] + [3 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [1]
    n = 1
    for g in grid:
        n *= g
    return x.permute(perm).reshape(b, p ** d, n, c)


def fold_patches(t: torch.Tensor, spatial: Sequence[int], p: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: ``(B, p^d, N, C) -> (B, C, *spatial)``."""
    b, _, _, c = t.shape
    d = len(spatial)
    grid = [s // p for s in spatial]
    t = t.reshape([b] + [p] * d + grid + [c])
    perm = [0, 2 * d + 1]
    for i in range(d):
        perm += [1 + d + i, 1 + i]
    return t.permute(perm).reshape(b, c, *spatial)


class GMSBlock(nn.Module):
    """Global multi-scale block (released ``MobileViTBlocktem_CT`` / ``MobileViTBlocktem_CT3D``).

    ``x = conv1x1(conv3x3(in))`` (Cin -> Cout, + norm + SiLU); split x into a transformer part
    (``split[0]`` channels) and a conv part (``split[1]``); conv part: ``x_c + ConvBranch(x_c)``;
    transformer part: unfolded into ``patch_size^d`` token sets of stride-``patch_size`` pixels (a
    stride-2 dilated global attention), ``depth`` pre-LN transformer layers (``heads x dim_head``),
    folded back; ``conv1x1(cat(x_t, x_c))`` (+ norm + SiLU), concatenated with the block input, and a
    3x3 conv (Cin + Cout -> Cout, + norm + SiLU). No final residual.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: Cin, Cout.
        split: ``(transformer channels, conv channels)``, summing to Cout (3:1 as released).
        mlp_dim: hidden width of the transformer MLP.
        norm: norm of the four plain convs ("batch" 2D / "instance" 3D as released); the conv
            branch always uses BatchNorm.

    Shapes: ``(N, Cin, *spatial) -> (N, Cout, *spatial)``; every spatial size must be divisible by
    ``patch_size`` (the models pad their input so that it is).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, split: Sequence[int] = (96, 32),
                 mlp_dim: int = 256, depth: int = 1, heads: int = 4, dim_head: int = 8, patch_size: int = 2,
                 kernel_size: int = 3, norm: NormSpec = "batch", dropout: float = 0.0):
        super().__init__()
        split = tuple(int(s) for s in split)
        if len(split) != 2 or sum(split) != out_channels or min(split) < 1:
            raise ValueError(f"GMSBlock: split must be two positive ints summing to out_channels="
                             f"{out_channels}, got {split}")
        self.split, self.patch_size = split, patch_size
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, norm=norm)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 1, norm=norm)
        self.conv_branch = ConvBranch(spatial_dims, split[1], 3)
        self.transformer = Transformer(split[0], depth, heads, dim_head, mlp_dim, dropout)
        self.conv3 = ConvNormAct(spatial_dims, out_channels, out_channels, 1, norm=norm)
        self.conv4 = ConvNormAct(spatial_dims, in_channels + out_channels, out_channels, kernel_size, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sp = x.shape[2:]
        if any(s % self.patch_size for s in sp):
            raise ValueError(f"GMSBlock: spatial size {tuple(sp)} must be divisible by "
                             f"patch_size={self.patch_size}")
        y = x
        x = self.conv2(self.conv1(x))
        x_t, x_c = torch.split(x, self.split, dim=1)
        x_c = self.conv_branch(x_c) + x_c
        x_t = fold_patches(self.transformer(unfold_patches(x_t, self.patch_size)), sp, self.patch_size)
        x = self.conv3(torch.cat((x_t, x_c), dim=1))
        return self.conv4(torch.cat((x, y), dim=1))
