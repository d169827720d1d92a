"""LGMSNet (Dong et al., ECAI 2025): lightweight U-Net of LMS + GMS blocks, 2D and 3D."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from segfuse.kernels.utils import check_spatial_dims, conv_type, linear_mode, look_up_option, maxpool_type

from .blocks.common import (PAD_MODES, ConvNormAct, NormSpec, check_input, crop_to, get_norm, pad_to_multiple,
                            strided_size)
from .blocks.gms import GMSBlock
from .blocks.lms import LMSBlock
from .registry import register_model


class ConvBlock(nn.Sequential):
    """Stem (released ``conv_block``): 3x3 conv (bias) -> norm -> ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec):
        super().__init__(conv_type(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=True),
                         get_norm(norm, spatial_dims, out_channels), nn.ReLU())


class UpConv(nn.Sequential):
    """Released ``up_conv``: x2 bilinear/trilinear upsample (align_corners=False) -> 3x3 conv (bias) ->
    norm -> ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec):
        super().__init__(nn.Upsample(scale_factor=2, mode=linear_mode(spatial_dims), align_corners=False),
                         conv_type(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=True),
                         get_norm(norm, spatial_dims, out_channels), nn.ReLU())


class FusionConv(nn.Sequential):
    """Released ``fusion_conv`` (CMUNeXt style, activation before norm): 3x3 conv groups=2 (bias) ->
    GELU -> norm -> 1x1 Cin -> 4Cout -> GELU -> norm -> 1x1 4Cout -> Cout -> GELU -> norm."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec):
        conv = conv_type(spatial_dims)
        super().__init__(
            conv(in_channels, in_channels, 3, padding=1, groups=2, bias=True), nn.GELU(),
            get_norm(norm, spatial_dims, in_channels),
            conv(in_channels, out_channels * 4, 1), nn.GELU(), get_norm(norm, spatial_dims, out_channels * 4),
            conv(out_channels * 4, out_channels, 1), nn.GELU(), get_norm(norm, spatial_dims, out_channels))


class LGMSNet(nn.Module):
    """LGMSNet as released (``LGMSNet`` / ``MKtinyvit4_CT``, 3D ``MKtinyvit4_CT3D`` = "SegmsNet3D").

    Encoder: stem -> [LMS + 1x1] x3 (full, 1/2, 1/4) -> GMS (1/8) -> GMS (1/16), max-pool between
    stages. Decoder: up_conv + skip concat + GMS (1/8); up_conv + skip + fusion_conv + GMS (1/4);
    up_conv + skip + fusion_conv (1/2, 1); 1x1 head.

    Args:
        spatial_dims: 2 (BatchNorm, bilinear) or 3 (InstanceNorm where the released 3D code has it,
            trilinear; GMS conv branch keeps BatchNorm, LMS keeps GroupNorm(4)).
        in_channels: input channels (released: 3 in 2D, 1 in 3D).
        num_classes: output channels (logits; 1 for the released binary 2D setting).
        deep_supervision: add 1x1 auxiliary heads on the decoder stages at 1/8, 1/4, 1/2; in training
            mode ``forward`` then returns ``[p_1/8, p_1/4, p_1/2, p_1]`` (coarse -> fine, native
            resolution). Off: no aux parameters at all; in eval mode the aux heads are never run.
        dims: widths of the five stages (released 16/32/64/128/128).
        splits: (transformer, conv) channel splits of the four GMS blocks enc4, enc5, dec5, dec4.
        kernel_sizes: LMS depthwise kernels (one per channel quarter).
        norm: override the norm of the plain conv layers ("batch" / "instance" / (name, kwargs));
            default: "batch" in 2D, "instance" in 3D, as released.
        heads, dim_head, mlp_ratio, depth, dropout: GMS transformer (4 x 8, MLP width = 2 x the
            block's output width, depth 1, no dropout as released).
        pad_mode: how odd inputs are padded up to a multiple of 32 (``F.pad`` mode), then cropped back.

    Shapes:
        input ``(N, in_channels, *spatial)`` of any size; internally padded at the high end of each
        spatial dim to a multiple of 32 (four max-pools, then GMS needs even sizes at 1/16).
        output ``(N, num_classes, *spatial)``; with deep supervision in training mode a list whose map
        k has size ``ceil(spatial / output_strides[k])``.

    Examples:
        >>> net = LGMSNet(2, 3, 1)                              # 2,321,393 parameters
        >>> net(torch.randn(1, 3, 37, 45)).shape
        torch.Size([1, 1, 37, 45])
        >>> net3d = LGMSNet(3, 1, 14, deep_supervision=True).train()
        >>> [tuple(p.shape[2:]) for p in net3d(torch.randn(1, 1, 18, 20, 22))]
        [(3, 3, 3), (5, 5, 6), (9, 10, 11), (18, 20, 22)]
    """

    size_multiple = 32
    output_strides = (8, 4, 2, 1)  # of the deep-supervision list, coarse -> fine

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, num_classes: int = 1,
                 deep_supervision: bool = False, dims: Sequence[int] = (16, 32, 64, 128, 128),
                 splits: Sequence[Sequence[int]] = ((96, 32), (96, 32), (96, 32), (48, 16)),
                 kernel_sizes: Sequence[int] = (3, 5, 7, 9), norm: Optional[NormSpec] = None,
                 heads: int = 4, dim_head: int = 8, mlp_ratio: float = 2.0, depth: int = 1,
                 dropout: float = 0.0, pad_mode: str = "constant"):
        super().__init__()
        d = self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LGMSNet: {name} must be a positive int, got {v!r}")
        dims = tuple(int(c) for c in dims)
        if len(dims) != 5 or any(c % 4 for c in dims[:3]):
            raise ValueError(f"LGMSNet: dims must be 5 widths, the first three divisible by 4, got {dims}")
        splits = tuple(tuple(s) for s in splits)
        if len(splits) != 4:
            raise ValueError(f"LGMSNet: splits must give 4 (transformer, conv) pairs, got {splits}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_supervision = bool(deep_supervision)
        self.pad_mode = look_up_option("pad_mode", pad_mode, PAD_MODES)
        norm = norm if norm is not None else ("batch" if d == 2 else "instance")
        c0, c1, c2, c3, c4 = dims

        def gms(cin, cout, split):
            return GMSBlock(d, cin, cout, split, mlp_dim=int(cout * mlp_ratio), depth=depth, heads=heads,
                            dim_head=dim_head, norm=norm, dropout=dropout)

        def lms_stage(cin, cout):
            return nn.Sequential(LMSBlock(d, cin, kernel_sizes, norm=norm),
                                 ConvNormAct(d, cin, cout, 1, norm=norm, act="silu"))

        self.pool = maxpool_type(d)(kernel_size=2, stride=2)
        self.stem = ConvBlock(d, in_channels, c0, norm)
        self.encoder1 = lms_stage(c0, c0)
        self.encoder2 = lms_stage(c0, c1)
        self.encoder3 = lms_stage(c1, c2)
        self.encoder4 = gms(c2, c3, splits[0])
        self.encoder5 = gms(c3, c4, splits[1])
        self.up5, self.up_conv5 = UpConv(d, c4, c3, norm), gms(2 * c3, c3, splits[2])
        self.up4 = UpConv(d, c3, c2, norm)
        self.up_conv4 = nn.Sequential(FusionConv(d, 2 * c2, c2, norm), gms(c2, c2, splits[3]))
        self.up3, self.up_conv3 = UpConv(d, c2, c1, norm), FusionConv(d, 2 * c1, c1, norm)
        self.up2, self.up_conv2 = UpConv(d, c1, c0, norm), FusionConv(d, 2 * c0, c0, norm)
        self.head = conv_type(d)(c0, num_classes, 1)
        if self.deep_supervision:
            self.aux_heads = nn.ModuleList(conv_type(d)(c, num_classes, 1) for c in (c3, c2, c1))

    def forward(self, x: torch.Tensor):
        """``x (N, in_channels, *spatial)`` -> logits ``(N, num_classes, *spatial)``, or in training mode
        with deep supervision the list ``[1/8, 1/4, 1/2, 1]`` of native-resolution logits."""
        check_input(x, self.spatial_dims, self.in_channels, "LGMSNet")
        size = tuple(x.shape[2:])
        x = pad_to_multiple(x, self.size_multiple, self.pad_mode)
        x1 = self.encoder1(self.stem(x))
        x2 = self.encoder2(self.pool(x1))
        x3 = self.encoder3(self.pool(x2))
        x4 = self.encoder4(self.pool(x3))
        x5 = self.encoder5(self.pool(x4))
        d5 = self.up_conv5(torch.cat((x4, self.up5(x5)), dim=1))
        d4 = self.up_conv4(torch.cat((x3, self.up4(d5)), dim=1))
        d3 = self.up_conv3(torch.cat((x2, self.up3(d4)), dim=1))
        d2 = self.up_conv2(torch.cat((x1, self.up2(d3)), dim=1))
        out = crop_to(self.head(d2), size)
        if not (self.deep_supervision and self.training):
            return out
        aux = [crop_to(h(f), strided_size(size, s))
               for h, f, s in zip(self.aux_heads, (d5, d4, d3), self.output_strides)]
        return aux + [out]


@register_model("lgmsnet")
def _lgmsnet(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw):
    return LGMSNet(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
