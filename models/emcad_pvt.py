"""EMCADNet with a PVT-v2-b2 encoder (SLDGroup/EMCAD ``lib/networks.py``; the LoMix network)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels.utils import batch_norm_type, check_spatial_dims, conv_type, linear_mode, look_up_option

from .blocks.common import PAD_MODES, check_input, crop_to, pad_to_multiple, strided_size
from .blocks.emcad import EMCADDecoder
from .registry import register_model


def build_timm_encoder(name: str = "pvt_v2_b2", weights_path: Optional[str] = None,
                       drop_path_rate: float = 0.1) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` with random weights, or weights read from a local
    file (an original whai362 ``pvt_v2_b2.pth`` or a timm state dict; timm remaps the keys). Never
    downloads anything."""
    from segfuse.compat import import_timm

    timm = import_timm()
    if weights_path is None:
        return timm.create_model(name, features_only=True, pretrained=False, drop_path_rate=drop_path_rate)
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path {path!r} is not a file")
    # pretrained=True with a file overlay: timm loads that file (through its key remapping), no hub
    return timm.create_model(name, features_only=True, pretrained=True, drop_path_rate=drop_path_rate,
                             pretrained_cfg_overlay=dict(file=path))


class EMCADPVT(nn.Module):
    """PVT-v2-b2 encoder + EMCAD decoder + four 1x1 heads (EMCADNet as used by LoMix).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels; unless 3, a 1x1 conv (-> 3) + BN + ReLU adapter comes first
            (the released grayscale adapter when ``in_channels=1``).
        num_classes: logit channels of each head (9 on Synapse).
        deep_supervision: in training mode return ``[p4, p3, p2, p1]`` at native 1/32, 1/16, 1/8, 1/4
            resolution (for LoMix / deep supervision; the fused loss upsamples), instead of the
            upsampled finest map. Off: only the p1 head exists.
        encoder: timm model name (``features_only``), default "pvt_v2_b2".
        weights_path: optional local encoder checkpoint; never downloaded.
        drop_path_rate: encoder stochastic depth (EMCAD uses 0.1).
        encoder_module, encoder_channels: use any module returning four maps at strides 4, 8, 16, 32
            (shallowest first) instead of timm; ``encoder_channels`` are their widths, shallowest first.
        kernel_sizes, expansion_factor, lgag_ks, activation, mscb_mode: EMCAD decoder options
            (released Synapse setting: (1, 3, 5), 2, 3, "relu6"; see ``MSCB`` for ``mscb_mode``).
        pad_mode: how inputs are padded to a multiple of 32 (``F.pad`` mode), then cropped back.

    Shapes:
        input ``(N, in_channels, H, W)``, any size (padded at the high end to a multiple of 32).
        output ``(N, num_classes, H, W)``: p1 (1/4) bilinearly upsampled x4 (``align_corners=False``)
        and cropped; deep supervision in training: a list, map k of size
        ``ceil((H, W) / output_strides[k])``.

    Example:
        >>> net = EMCADPVT(2, 1, 9, deep_supervision=True).train()
        >>> [tuple(p.shape) for p in net(torch.randn(1, 1, 64, 64))]  # doctest: +SKIP
        [(1, 9, 2, 2), (1, 9, 4, 4), (1, 9, 8, 8), (1, 9, 16, 16)]
    """

    size_multiple = 32
    output_strides = (32, 16, 8, 4)  # of the deep-supervision list, coarse -> fine

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 9,
                 deep_supervision: bool = False, encoder: str = "pvt_v2_b2", weights_path: Optional[str] = None,
                 drop_path_rate: float = 0.1, encoder_module: Optional[nn.Module] = None,
                 encoder_channels: Optional[Sequence[int]] = None, kernel_sizes: Sequence[int] = (1, 3, 5),
                 expansion_factor: float = 2, lgag_ks: int = 3, activation: str = "relu6",
                 mscb_mode: str = "faithful", pad_mode: str = "constant"):
        super().__init__()
        if check_spatial_dims(spatial_dims) != 2:
            raise ValueError(f"EMCADPVT: spatial_dims must be 2 (PVT-v2 is a 2D encoder), got {spatial_dims!r}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"EMCADPVT: {name} must be a positive int, got {v!r}")
        d = self.spatial_dims = 2
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_supervision = bool(deep_supervision)
        self.pad_mode = look_up_option("pad_mode", pad_mode, PAD_MODES)
        self.adapter = (nn.Sequential(conv_type(d)(in_channels, 3, 1), batch_norm_type(d)(3), nn.ReLU())
                        if in_channels != 3 else nn.Identity())
        if encoder_module is not None:
            if weights_path is not None:
                raise ValueError("EMCADPVT: weights_path is for the timm encoder; load encoder_module's "
                                 "weights yourself")
            if encoder_channels is None or len(encoder_channels) != 4:
                raise ValueError("EMCADPVT: encoder_module needs encoder_channels, 4 widths shallowest first")
            self.encoder = encoder_module
            enc_ch = tuple(int(c) for c in encoder_channels)
        else:
            self.encoder = build_timm_encoder(encoder, weights_path, drop_path_rate)
            enc_ch = tuple(self.encoder.feature_info.channels())
        dec_ch = enc_ch[::-1]
        self.decoder = EMCADDecoder(d, dec_ch, kernel_sizes, expansion_factor, lgag_ks, activation, mscb_mode)
        n_heads = 4 if self.deep_supervision else 1
        self.heads = nn.ModuleList(conv_type(d)(c, num_classes, 1) for c in dec_ch[4 - n_heads:])

    def forward(self, x: torch.Tensor):
        """``x (N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``, or in training mode with deep
        supervision ``[p4, p3, p2, p1]`` at native 1/32 .. 1/4 resolution."""
        check_input(x, self.spatial_dims, self.in_channels, "EMCADPVT")
        size = tuple(x.shape[2:])
        x = pad_to_multiple(self.adapter(x), self.size_multiple, self.pad_mode)
        x1, x2, x3, x4 = self.encoder(x)
        dec = self.decoder(x4, [x3, x2, x1])
        if self.deep_supervision and self.training:
            return [crop_to(h(d), strided_size(size, s)) for h, d, s in zip(self.heads, dec, self.output_strides)]
        p1 = self.heads[-1](dec[-1])
        return crop_to(F.interpolate(p1, scale_factor=4, mode=linear_mode(self.spatial_dims), align_corners=False),
                       size)


@register_model("emcad_pvt_v2_b2")
def _emcad_pvt(spatial_dims, in_channels, num_classes, deep_supervision=False, **kw):
    return EMCADPVT(spatial_dims, in_channels, num_classes, deep_supervision=deep_supervision, **kw)
