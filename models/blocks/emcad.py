"""EMCAD decoder (Rahman et al., CVPR 2024) as released in SLDGroup/EMCAD ``lib/decoders.py``.

MSCAM = CAB -> shared SAB -> MSCB at every stage; EUCB upsamples; LGAG gates the skip. The
multi-scale depthwise convolution inside MSCB runs as one fused
:class:`~segfuse.kernels.MultiKernelDWConv` launch (see :class:`MSCB` for how this stays exact).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

from segfuse.kernels import MultiKernelDWConv
from segfuse.kernels.utils import batch_norm_type, conv_type, look_up_option

from .common import channel_shuffle, get_act, get_norm

MSCB_MODES = ("faithful", "summed")


def init_emcad_(module: nn.Module) -> None:
    """EMCAD's "normal" init: conv (and fused depthwise) weights N(0, 0.02), biases 0, BN 1/0."""
    for m in module.modules():
        if isinstance(m, (conv_type(2), conv_type(3))):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MultiKernelDWConv):
            for w in m.weights:
                nn.init.normal_(w, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (batch_norm_type(2), batch_norm_type(3))):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CAB(nn.Module):
    """Channel attention: ``sigmoid(fc2(relu(fc1(avgpool x))) + fc2(relu(fc1(maxpool x))))``, shared
    1x1 convs C -> C/16 -> C without bias (ratio C when C < 16). Returns the ``(N, C, 1..)`` gate."""

    def __init__(self, spatial_dims: int, channels: int, ratio: int = 16):
        super().__init__()
        ratio = min(ratio, channels)
        conv = conv_type(spatial_dims)
        self.fc1 = conv(channels, channels // ratio, 1, bias=False)
        self.fc2 = conv(channels // ratio, channels, 1, bias=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        avg = x.mean(dims, keepdim=True)
        mx = x.amax(dims, keepdim=True)
        return torch.sigmoid(self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx))))


class SAB(nn.Module):
    """Spatial attention: ``sigmoid(conv7([mean_c x, max_c x]))`` (2 -> 1 channels, no bias). Returns
    the ``(N, 1, *spatial)`` gate."""

    def __init__(self, spatial_dims: int, kernel_size: int = 7):
        super().__init__()
        self.conv = conv_type(spatial_dims)(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(stats))


class MSCB(nn.Module):
    """Multi-scale convolution block, C -> C, stride 1, parallel depthwise branches added (the released
    Synapse setting: kernels 1/3/5, expansion 2, ``dw_parallel=True``, ``add=True``).

    ``h = act(BN(conv1x1(x)))`` (C -> E = C * expansion); ``h = sum_k act(BN_k(DW_k(h)))``; channel
    shuffle (groups ``gcd(E, C)``); ``y = x + BN(conv1x1(h))`` (E -> C).

    Args:
        mode: how the branches map onto the fused depthwise kernel.
            "faithful" (default, exact): the released block normalises and activates each branch
            before the sum, which is not linear, so one summed conv cannot reproduce it. Instead
            ``h`` is replicated to 3E channels and run through ONE grouped launch
            (``MultiKernelDWConv(3E, kernel_sizes, "grouped")``: group k holds a copy of ``h`` and
            kernel k), then one BatchNorm over 3E channels (= the per-branch BNs) + act, then the
            three chunks are summed. Parameter count and maths equal the released block.
            "summed" (cheaper, NOT the released maths): ``act(BN(sum_k DW_k(h)))`` with one
            summed-mode launch and a single BN; a variant, not a reproduction.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5),
                 expansion_factor: float = 2, activation: str = "relu6", mode: str = "faithful"):
        super().__init__()
        self.mode = look_up_option("mode", mode, MSCB_MODES)
        conv = conv_type(spatial_dims)
        ex = int(channels * expansion_factor)
        n = len(kernel_sizes)
        self.n_scales, self.ex_channels = n, ex
        self.shuffle_groups = math.gcd(ex, channels)
        self.pconv1 = nn.Sequential(conv(channels, ex, 1, bias=False), get_norm("batch", spatial_dims, ex),
                                    get_act(activation))
        if self.mode == "faithful":
            self.dwconv = MultiKernelDWConv(spatial_dims, ex * n, tuple(kernel_sizes), mode="grouped", bias=False)
            self.dw_norm = get_norm("batch", spatial_dims, ex * n)
        else:
            self.dwconv = MultiKernelDWConv(spatial_dims, ex, tuple(kernel_sizes), mode="summed", bias=False,
                                            identity=False)
            self.dw_norm = get_norm("batch", spatial_dims, ex)
        self.dw_act = get_act(activation)
        self.pconv2 = nn.Sequential(conv(ex, channels, 1, bias=False), get_norm("batch", spatial_dims, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pconv1(x)
        if self.mode == "faithful":
            h = self.dw_act(self.dw_norm(self.dwconv(torch.cat([h] * self.n_scales, dim=1))))
            h = h.reshape(h.shape[0], self.n_scales, self.ex_channels, *h.shape[2:]).sum(1)
        else:
            h = self.dw_act(self.dw_norm(self.dwconv(h)))
        return x + self.pconv2(channel_shuffle(h, self.shuffle_groups))


class EUCB(nn.Module):
    """Efficient up-convolution: nearest x2 upsample -> depthwise 3x3 (no bias) -> BN -> act -> 1x1 conv
    Cin -> Cout (bias). (The released channel shuffle here uses groups = Cin, an identity.)"""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 activation: str = "relu6"):
        super().__init__()
        conv = conv_type(spatial_dims)
        self.up_dwc = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            get_norm("batch", spatial_dims, in_channels), get_act(activation))
        self.pwc = conv(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwc(self.up_dwc(x))


class LGAG(nn.Module):
    """Large-kernel grouped attention gate: ``x * sigmoid(BN(conv1x1(act(BN(Wg g) + BN(Wx x)))))`` where
    Wg, Wx are kxk grouped convs C -> C/2 (groups C/2, bias)."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3, activation: str = "relu6"):
        super().__init__()
        conv = conv_type(spatial_dims)
        f_int = channels // 2
        groups = f_int if kernel_size != 1 else 1
        self.W_g = nn.Sequential(conv(channels, f_int, kernel_size, padding=kernel_size // 2, groups=groups),
                                 get_norm("batch", spatial_dims, f_int))
        self.W_x = nn.Sequential(conv(channels, f_int, kernel_size, padding=kernel_size // 2, groups=groups),
                                 get_norm("batch", spatial_dims, f_int))
        self.psi = nn.Sequential(conv(f_int, 1, 1), get_norm("batch", spatial_dims, 1), nn.Sigmoid())
        self.act = get_act(activation)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.act(self.W_g(g) + self.W_x(x)))


class EMCADDecoder(nn.Module):
    """EMCAD decoder over four encoder maps.

    Args:
        spatial_dims: 2 (the released setting) or 3.
        channels: encoder widths deepest first, e.g. ``(512, 320, 128, 64)`` for PVT-v2-b2.
        kernel_sizes, expansion_factor, activation, mscb_mode: MSCB options (see :class:`MSCB`).
        lgag_ks: LGAG kernel size.

    ``forward(x4, skips=[x3, x2, x1])`` with ``x_i`` of shape ``(N, channels[4-i], *s_i)``, each
    stage twice the size of the one below, returns ``[d4, d3, d2, d1]`` (coarse -> fine) with
    ``channels[0..3]`` channels.
    """

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (512, 320, 128, 64),
                 kernel_sizes: Sequence[int] = (1, 3, 5), expansion_factor: float = 2, lgag_ks: int = 3,
                 activation: str = "relu6", mscb_mode: str = "faithful"):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4:
            raise ValueError(f"EMCADDecoder: channels must give 4 widths (deepest first), got {channels}")
        d = spatial_dims

        def mscb(c):
            return MSCB(d, c, kernel_sizes, expansion_factor, activation, mscb_mode)

        self.mscb = nn.ModuleList(mscb(c) for c in channels)
        self.cab = nn.ModuleList(CAB(d, c) for c in channels)
        self.sab = SAB(d)  # one SAB shared by all four stages, as released
        self.eucb = nn.ModuleList(EUCB(d, cin, cout, 3, activation) for cin, cout in zip(channels, channels[1:]))
        self.lgag = nn.ModuleList(LGAG(d, c, lgag_ks, activation) for c in channels[1:])
        init_emcad_(self)

    def _mscam(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.cab[i](x) * x
        x = self.sab(x) * x
        return self.mscb[i](x)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(skips) != 3:
            raise ValueError(f"EMCADDecoder: skips must hold 3 maps [x3, x2, x1], got {len(skips)}")
        d = self._mscam(0, x)
        outs = [d]
        for i, skip in enumerate(skips):
            d = self.eucb[i](d)
            d = d + self.lgag[i](d, skip)
            d = self._mscam(i + 1, d)
            outs.append(d)
        return outs
