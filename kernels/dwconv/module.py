"""``MultiKernelDWConv``: the nn.Module the models use."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import check_odd_sizes, check_spatial_dims, look_up_option
from .function import MODES, multi_kernel_dwconv


class MultiKernelDWConv(nn.Module):
    """Depthwise convolution with several odd kernel sizes, fused into one op (stride 1, same padding).

    Args:
        spatial_dims: 2 (input ``(N, C, H, W)``) or 3 (input ``(N, C, D, H, W)``).
        channels: C, input = output channels.
        kernel_sizes: odd sizes, e.g. ``(3, 5, 7, 9)`` (LGMSNet LMS) or ``(5, 7)`` (FIAS DMK).
        mode: "grouped": C split into ``len(kernel_sizes)`` equal groups, group g convolved with
            kernel ``kernel_sizes[g]``; "summed": every kernel on every channel, results summed.
        bias: learnable per-channel bias.
        identity: "summed" only, add the input (``x + DW_5(x) + DW_7(x)``); default True for
            "summed", False for "grouped".

    Parameters: ``weight_{k}`` of shape ``(C_g, 1, k, ..)`` per kernel, as a depthwise ``nn.Conv``
    holds it (``C_g = C/G`` grouped, ``C`` summed), initialised like ``nn.Conv``; ``bias`` ``(C,)``.

    Examples:
        >>> lms = MultiKernelDWConv(2, 64, (3, 5, 7, 9))                # 2D LGMSNet LMS
        >>> dmk = MultiKernelDWConv(3, 32, (5, 7), mode="summed", bias=False)  # 3D DMK
        >>> lms(torch.randn(1, 64, 33, 47)).shape
        torch.Size([1, 64, 33, 47])
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7, 9),
                 mode: str = "grouped", bias: bool = True, identity: Optional[bool] = None):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.mode = look_up_option("mode", mode, MODES)
        self.kernel_sizes = check_odd_sizes("kernel_sizes", kernel_sizes)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        G = len(self.kernel_sizes)
        if self.mode == "grouped" and channels % G:
            raise ValueError(f"channels ({channels}) must be divisible by the number of kernel sizes ({G}) "
                             "in grouped mode")
        if self.mode == "grouped" and len(set(self.kernel_sizes)) != G:
            raise ValueError(f"kernel_sizes must be distinct, got {self.kernel_sizes}")
        if identity is None:
            identity = self.mode == "summed"
        if identity and self.mode != "summed":
            raise ValueError("identity=True is only defined for mode='summed'")
        self.channels = channels
        self.identity = bool(identity)
        cg = channels // G if self.mode == "grouped" else channels
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(cg, 1, *([k] * self.spatial_dims))) for k in self.kernel_sizes])
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cg = self.weights[0].shape[0]
        for g, w in enumerate(self.weights):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv default
            if self.bias is not None:
                bound = 1.0 / math.sqrt(w[0].numel())
                sl = slice(g * cg, (g + 1) * cg) if self.mode == "grouped" else slice(None)
                if self.mode == "grouped" or g == 0:
                    nn.init.uniform_(self.bias.data[sl], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"x must be {self.spatial_dims + 2}-D for spatial_dims={self.spatial_dims}, "
                             f"got shape {tuple(x.shape)}")
        weights = [w.to(x.dtype) for w in self.weights]  # autocast-style: compute in the input dtype
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return multi_kernel_dwconv(x, weights, bias, mode=self.mode, identity=self.identity)

    def extra_repr(self) -> str:
        return (f"spatial_dims={self.spatial_dims}, channels={self.channels}, kernel_sizes={self.kernel_sizes}, "
                f"mode={self.mode!r}, bias={self.bias is not None}, identity={self.identity}")
