"""A plain U-Net in PyTorch (2D/3D), registered as ``"unet"``: the baseline of ``segfuse train`` and the test model.

``UNet(spatial_dims, in_channels, num_classes, channels=(16, 32, 64))``: ``len(channels)`` levels, two
3x3(x3) conv + InstanceNorm + LeakyReLU per level, max-pool down, transposed-conv up.
Input ``[N, C, *S]`` with every S a multiple of ``size_multiple = 2 ** (levels - 1)``; output logits
``[N, num_classes, *S]``. With ``deep_supervision=True`` and in training mode, forward returns a list
of logits coarse -> fine (decoder levels, at their native resolution ``S / 2**k``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segfuse.kernels.utils import (check_spatial_dims, conv_transpose_type, conv_type, instance_norm_type,
                                   maxpool_type)

from .registry import register_model


def _block(nd, cin, cout):
    conv = conv_type(nd)
    norm = instance_norm_type(nd)
    return nn.Sequential(conv(cin, cout, 3, padding=1), norm(cout, affine=True), nn.LeakyReLU(0.01, True),
                         conv(cout, cout, 3, padding=1), norm(cout, affine=True), nn.LeakyReLU(0.01, True))


class UNet(nn.Module):
    """Plain U-Net (see the module docstring); ``size_multiple`` and ``output_strides`` as every segfuse model."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 channels: Sequence[int] = (16, 32, 64), deep_supervision: bool = False):
        super().__init__()
        nd = self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = conv_type(nd)
        up = conv_transpose_type(nd)
        self.pool = maxpool_type(nd)(2)
        self.deep_supervision = deep_supervision
        ch = list(channels)
        self.down = nn.ModuleList([_block(nd, cin, cout) for cin, cout in zip([in_channels] + ch[:-1], ch)])
        self.up = nn.ModuleList([up(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.dec = nn.ModuleList([_block(nd, 2 * ch[i], ch[i]) for i in reversed(range(len(ch) - 1))])
        # auxiliary heads only with deep supervision (unused parameters would stall DDP's reducer)
        levels = list(reversed(range(len(ch) - 1))) if deep_supervision else [0]
        self.heads = nn.ModuleList([conv(ch[i], num_classes, 1) for i in levels])
        self.output_strides = [2 ** i for i in reversed(range(len(ch) - 1))]
        self.size_multiple = 2 ** (len(ch) - 1)

    def forward(self, x: torch.Tensor):
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        outs = []
        for k, (up, dec) in enumerate(zip(self.up, self.dec)):
            x = dec(torch.cat([up(x), skips.pop()], 1))
            if self.deep_supervision and self.training:
                outs.append(self.heads[k](x))
        if self.deep_supervision and self.training:
            return outs
        return self.heads[-1](x)


@register_model("unet")
def _unet(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw):
    return UNet(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
