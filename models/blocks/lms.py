"""LGMSNet's local multi-scale (LMS) block on the fused multi-kernel depthwise convolution."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segfuse.kernels import MultiKernelDWConv

from .common import ConvNormAct, NormSpec


class LMSBlock(nn.Module):
    """Local multi-scale block (released as ``CMUNeXtBlock_MK_resiual2``), C in = C out.

    ``h = GELU(GroupNorm_4(DW_{3,5,7,9}(x) + x))``; ``y = conv3x3(conv1x1(h)) + x`` where the 1x1 conv
    squeezes C -> C/4 and the 3x3 conv restores C (each without bias, + norm + SiLU). The four
    depthwise convs (kernel 3/5/7/9, with bias, one per channel quarter) are one fused
    :class:`~segfuse.kernels.MultiKernelDWConv` launch in "grouped" mode.

    Args:
        spatial_dims: 2 or 3.
        channels: C, divisible by ``len(kernel_sizes)`` and by 4 (bottleneck, GroupNorm(4)).
        kernel_sizes: one odd kernel per channel group.
        norm: norm of the two bottleneck convs: "batch" (released 2D) or "instance" (released 3D).

    Shapes: ``(N, C, *spatial) -> (N, C, *spatial)``.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7, 9),
                 norm: NormSpec = "batch"):
        super().__init__()
        if channels % 4:
            raise ValueError(f"LMSBlock: channels must be divisible by 4 (GroupNorm(4), C/4 bottleneck), "
                             f"got {channels}")
        self.dwconv = MultiKernelDWConv(spatial_dims, channels, tuple(kernel_sizes), mode="grouped", bias=True)
        self.norm_act = nn.Sequential(nn.GroupNorm(4, channels), nn.GELU())
        self.squeeze = ConvNormAct(spatial_dims, channels, channels // 4, 1, norm=norm, act="silu")
        self.expand = ConvNormAct(spatial_dims, channels // 4, channels, 3, norm=norm, act="silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_act(self.dwconv(x) + x)
        return self.expand(self.squeeze(h)) + x
