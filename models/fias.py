"""FIAS (Liu, Xu, Ho, ISBI 2025, arXiv 2411.10881): a DilateFormer global branch and a depthwise multi-kernel
local branch, fused per stage by context-aware fusion, decoded by mixing attention (MHSA + Monte-Carlo
attention) with deep supervision. 2D only.

The paper's code is not public; the layout follows the first author's scaffold (``Xiwei-web/FIAS``) with a
real DilateFormer (MSDA) encoder and SvANet's Monte-Carlo attention.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels.utils import InputShapeError, InputValueError, check_spatial_dims, look_up_option

from .blocks.common import check_input
from .blocks.dilateformer import DilateFormerEncoder
from .blocks.dmk import DMKEncoder
from .blocks.fias_decoder import ContextAwareFusion, MixAttDecoder
from .registry import register_model

MCA_VARIANTS = ("channel", "spatial")


def _positive_ints(model: str, name: str, values, n: int) -> tuple:
    values = tuple(values)
    if len(values) != n or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise InputValueError(f"{model}: {name} must be {n} positive ints, got {values!r}")
    return values


class FIAS(nn.Module):
    """FIAS: DilateFormer (global) + DMK (local) encoders -> CAF per stage -> MixAtt decoder -> heads.

    Encoder strides are 4, 8, 16, 32 (DilateFormer's native pyramid: stride-4 overlapping stem, three
    stride-2 patch mergings); the DMK branch (stride-2 stem, stride-2 conv per stage) matches them. The
    scaffold runs both at 2, 4, 8, 16 with a 1/2-resolution main head; here the main head works at 1/4,
    as DilateFormer and most transformer U-Nets (TransUNet-style heads upsample the 1/4 map).

    * DilateFormer-tiny by default: embed 72, depths 2/2/6/2, heads 3/6/12/24, MSDA (3x3, dilations 1/2/3,
      one per head group) in stages 1-2, global MHSA in stages 3-4; widths 72/144/288/576.
    * DMK: widths 32/64/128/256, ``BN(y + DW5(y) + DW7(y))`` fused in one ``MultiKernelDWConv``.
    * CAF per stage: ``concat(DMK_i, DilateFormer_i)`` -> 1x1 to ``widths[i]`` (the width projection) ->
      channel gate (avg + max) -> spatial gate -> Conv3x3-BN-ReLU.
    * MixAtt decoder: bridge on the 1/32 map, blocks at 1/16, 1/8, 1/4, each level mixing MHSA and MCA, with
      MHSA heads ``head_count(width, decoder_heads[i])`` (default 8/6/4/2 -> 8/4/4/2 on widths 256/128/64/32).
    * Heads: main 1x1 on the 1/4 block (upsampled x4 bilinearly at inference); deep supervision 1x1 heads on
      the bridge (1/32), block 1 (1/16) and block 2 (1/8), as the scaffold's three auxiliary heads.

    Args:
        spatial_dims: must be 2.
        in_channels, num_classes: input channels, logit channels.
        deep_supervision: in training mode ``forward`` returns ``[aux_1/32, aux_1/16, aux_1/8, main_1/4]``
            at native resolution (``output_strides = (32, 16, 8, 4)``; the main map is *not* upsampled in
            this list, :func:`segfuse.models.resize_logits` or the loss brings it to the labels). Off: the
            auxiliary heads do not exist.
        widths: DMK / fused / decoder widths, shallowest first.
        embed_dim, depths, num_heads, dilations, mlp_ratio, stem_hidden, drop_path_rate: DilateFormer
            (``num_heads`` of the MSDA stages must be multiples of ``len(dilations)``).
        dmk_kernel_sizes: the DMK depthwise kernels (5, 7).
        decoder_heads: maximum MHSA heads per decoder level, deep -> shallow, bridge first (FIAS 8/6/4/2; a
            value that does not divide the level's width falls back to its largest divisor below it). The
            scaffold's bridge has no attention; here it mixes MHSA and MCA like the other levels.
        mca_variant: "channel" (SvANet's Monte-Carlo channel gate, default) or "spatial" (the scaffold's
            spatial gate).
        mca_pool_sizes: Monte-Carlo pool sizes (1, 2, 3).
        dropout: Dropout2d inside the MixAtt blocks (0.1).

    Shapes:
        input ``(N, in_channels, H, W)`` with H, W multiples of ``size_multiple`` (32); output
        ``(N, num_classes, H, W)``; with deep supervision in training, map k is ``(H, W) / output_strides[k]``.

    Example:
        >>> net = FIAS(2, 1, 9)
        >>> net.eval()(torch.randn(1, 1, 64, 64)).shape
        torch.Size([1, 9, 64, 64])
    """

    size_multiple = 32
    output_strides = (32, 16, 8, 4)  # of the deep-supervision list, coarse -> fine

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 9,
                 deep_supervision: bool = False, widths: Sequence[int] = (32, 64, 128, 256), embed_dim: int = 72,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 dilations: Sequence[int] = (1, 2, 3), mlp_ratio: float = 4.0, stem_hidden: int = 16,
                 drop_path_rate: float = 0.0, dmk_kernel_sizes: Sequence[int] = (5, 7),
                 decoder_heads: Sequence[int] = (8, 6, 4, 2), mca_variant: str = "channel",
                 mca_pool_sizes: Sequence[int] = (1, 2, 3), dropout: float = 0.1):
        super().__init__()
        if check_spatial_dims(spatial_dims) != 2:
            raise InputValueError(f"FIAS: spatial_dims must be 2 (DilateFormer and the FIAS decoder are 2D), "
                                  f"got {spatial_dims!r}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputValueError(f"FIAS: {name} must be a positive int, got {v!r}")
        widths = _positive_ints("FIAS", "widths", widths, 4)
        depths = _positive_ints("FIAS", "depths", depths, 4)
        num_heads = _positive_ints("FIAS", "num_heads", num_heads, 4)
        decoder_heads = _positive_ints("FIAS", "decoder_heads", decoder_heads, 4)
        dilations = tuple(dilations)
        if not dilations or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in dilations):
            raise InputValueError(f"FIAS: dilations must be positive ints, got {dilations!r}")
        for i in range(4):
            dim = embed_dim * 2 ** i
            if dim % num_heads[i]:
                raise InputValueError(f"FIAS: num_heads[{i}]={num_heads[i]} must divide the stage width "
                                      f"embed_dim * 2**{i} = {dim}")
            if i < 2 and num_heads[i] % len(dilations):
                raise InputValueError(f"FIAS: num_heads[{i}]={num_heads[i]} must be a multiple of "
                                      f"len(dilations)={len(dilations)} (MSDA splits heads into dilation groups)")
        self.spatial_dims = 2
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_supervision = bool(deep_supervision)
        self.mca_variant = look_up_option("mca_variant", mca_variant, MCA_VARIANTS)
        self.global_encoder = DilateFormerEncoder(in_channels, embed_dim, depths, num_heads, dilations,
                                                  mlp_ratio=mlp_ratio, stem_hidden=stem_hidden,
                                                  drop_path_rate=drop_path_rate)
        self.local_encoder = DMKEncoder(in_channels, widths, dmk_kernel_sizes)
        self.fusions = nn.ModuleList(ContextAwareFusion(cl, cg, cl)
                                     for cl, cg in zip(widths, self.global_encoder.channels))
        self.decoder = MixAttDecoder(widths, decoder_heads, self.mca_variant, mca_pool_sizes, dropout)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        if self.deep_supervision:
            self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in widths[:0:-1])

    def forward(self, x: torch.Tensor):
        """``x (N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``, or in training mode with deep
        supervision ``[aux_1/32, aux_1/16, aux_1/8, main_1/4]`` at native resolution."""
        check_input(x, self.spatial_dims, self.in_channels, "FIAS")
        size = tuple(x.shape[2:])
        if any(s % self.size_multiple for s in size):
            raise InputShapeError(f"FIAS: the spatial size of x must be a multiple of size_multiple="
                                  f"{self.size_multiple} (the deepest feature map is at 1/32), got {size}")
        fused = [fuse(lo, gl) for fuse, lo, gl in zip(self.fusions, self.local_encoder(x), self.global_encoder(x))]
        dec = self.decoder(fused)  # [1/32, 1/16, 1/8, 1/4]
        main = self.head(dec[-1])
        if self.deep_supervision and self.training:
            return [h(d) for h, d in zip(self.aux_heads, dec[:-1])] + [main]
        return F.interpolate(main, size=size, mode="bilinear", align_corners=False)


@register_model("fias")
def _fias(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw):
    return FIAS(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
