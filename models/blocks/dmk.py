"""FIAS local branch: the depthwise multi-kernel (DMK) encoder (``Xiwei-web/FIAS:
fias/models/encoders/dmk_encoder.py``, the author's scaffold), with ``y + DW5(y) + DW7(y)`` as one fused
:class:`~segfuse.kernels.MultiKernelDWConv` launch (summed mode with identity, no bias)."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from segfuse.kernels import MultiKernelDWConv


class ConvBNReLU(nn.Sequential):
    """``conv k x k (stride, pad k // 2, no bias) -> BatchNorm2d -> ReLU`` (the scaffold's ``ConvBNAct``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class DMKBlock(nn.Module):
    """``y = ConvBNReLU3x3(x)`` (stride ``stride``); ``BN(y + DW_5(y) + DW_7(y))``; ``ConvBNReLU1x1``.

    The depthwise kernels (no bias) are ``dwconv.weights`` (one ``(C, 1, k, k)`` tensor per size).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_sizes: Sequence[int] = (5, 7)):
        super().__init__()
        self.local = ConvBNReLU(in_channels, out_channels, 3, stride)
        self.dwconv = MultiKernelDWConv(2, out_channels, tuple(kernel_sizes), mode="summed", bias=False, identity=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.proj = ConvBNReLU(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bn(self.dwconv(self.local(x))))


class DMKEncoder(nn.Module):
    """Stem ``ConvBNReLU3x3`` stride 2 (C_in -> widths[0]), then one :class:`DMKBlock` per stage whose 3x3 conv
    has stride 2: features at strides 4, 8, 16, 32 with ``widths`` channels (FIAS: 32, 64, 128, 256).

    The scaffold keeps its stem at stride 1 and adds a two-conv ``DownsampleStage`` before each block; here
    the block's own 3x3 conv downsamples, so the four maps line up with DilateFormer's strides.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256),
                 kernel_sizes: Sequence[int] = (5, 7)):
        super().__init__()
        self.channels = tuple(widths)
        self.stem = ConvBNReLU(in_channels, widths[0], 3, stride=2)
        chans = (widths[0],) + tuple(widths)
        self.stages = nn.ModuleList(DMKBlock(chans[i], chans[i + 1], 2, kernel_sizes) for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
