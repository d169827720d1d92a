"""``MonteCarloAttention``: SvANet's Monte-Carlo channel attention (and the FIAS-scaffold spatial variant)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import InputShapeError, InputValueError, check_spatial_dims, look_up_option
from .function import check_pool_sizes, mc_attention, mc_spatial_attention

VARIANTS = ("channel", "spatial")


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """SvANet's ``makeDivisible`` (= torchvision's ``_make_divisible``): the nearest multiple of ``divisor``,
    at least ``min_value`` (default ``divisor``), never below 90% of ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def hidden_channels(channels: int) -> int:
    """SvANet's excitation width: ``max(make_divisible(C / 4, 8), 32)``."""
    return max(make_divisible(channels / 4, 8), 32)


class MonteCarloAttention(nn.Module):
    """Monte-Carlo attention, 2D or 3D.

    ``variant="channel"`` (default): SvANet's ``MoCAttention``, a channel gate. Training: the per-channel
    descriptor is the mean over a random subset of about ``S / k^d`` positions (``k`` drawn from
    ``pool_sizes`` each forward, one subset for the whole batch; SvANet's shuffle + ``k x k`` pool + one
    cell, without the shuffled copy), eval: global average pooling; then an SE MLP
    ``C -> hidden -> C`` (ReLU, sigmoid) and ``y = x * gate``. Fused Triton kernels, forward and backward
    (:func:`segfuse.kernels.mc_attention.mc_attention`).

    ``variant="spatial"``: the FIAS author scaffold's module, a spatial gate from the channel-mean map
    pooled to ``p^d`` per ``p`` in ``pool_sizes`` and resized back (training: one size drawn at random;
    eval: their average), 1x1 conv 1 -> 1, sigmoid. Eager torch only
    (:func:`segfuse.kernels.mc_attention.mc_spatial_attention`).

    Args:
        spatial_dims: 2 (input ``(N, C, H, W)``) or 3 (``(N, C, D, H, W)``).
        channels: C.
        pool_sizes: pool-size choices (positive ints), default ``(1, 2, 3)`` as SvANet / FIAS.
        variant: "channel" or "spatial".
        generator: optional ``torch.Generator`` (on the device of the inputs) for the training draws;
            None uses the global RNG (the form ``torch.compile(fullgraph=True)`` traces).

    Parameters (channel): ``weight1 (hidden, C)``, ``bias1 (hidden,)``, ``weight2 (C, hidden)``,
    ``bias2 (C,)`` with ``hidden = max(make_divisible(C / 4, 8), 32)``, initialised as SvANet's 1x1
    convs (the ``nn.Conv`` / ``nn.Linear`` default: Kaiming-uniform ``a = sqrt(5)`` weights,
    ``uniform(+-1/sqrt(fan_in))`` biases). Spatial: ``weight (1,)``, ``bias (1,)``, the same init
    (fan_in 1). Parameters are cast to the input dtype in the forward.

    Example:
        >>> mca = MonteCarloAttention(2, 64)
        >>> mca(torch.randn(2, 64, 17, 23)).shape
        torch.Size([2, 64, 17, 23])
    """

    def __init__(self, spatial_dims: int, channels: int, pool_sizes: Sequence[int] = (1, 2, 3),
                 variant: str = "channel", generator: Optional[torch.Generator] = None):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise InputValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.pool_sizes = check_pool_sizes("pool_sizes", pool_sizes)
        self.variant = look_up_option("variant", variant, VARIANTS)
        self.generator = generator
        if self.variant == "channel":
            self.hidden = hidden_channels(channels)
            self.weight1 = nn.Parameter(torch.empty(self.hidden, channels))
            self.bias1 = nn.Parameter(torch.empty(self.hidden))
            self.weight2 = nn.Parameter(torch.empty(channels, self.hidden))
            self.bias2 = nn.Parameter(torch.empty(channels))
        else:
            self.weight = nn.Parameter(torch.empty(1))
            self.bias = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def _pairs(self):
        if self.variant == "channel":
            return ((self.weight1, self.bias1), (self.weight2, self.bias2))
        return ((self.weight, self.bias),)

    def reset_parameters(self) -> None:
        for w, b in self._pairs():
            fan_in = w.shape[1] if w.dim() == 2 else 1
            bound = 1.0 / math.sqrt(fan_in)
            if w.dim() == 2:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # the nn.Conv default: uniform(+-1/sqrt(fan_in))
            else:  # the spatial variant's 1x1 conv 1 -> 1 (fan_in 1): the same distribution, uniform(-1, 1)
                nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != self.spatial_dims + 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise InputShapeError(f"x must be {self.spatial_dims + 2}-D {layout} for spatial_dims={self.spatial_dims}, "
                                  f"got {shape}")
        if x.shape[1] != self.channels:
            raise InputShapeError(f"x must have {self.channels} channels (dim 1), got shape {tuple(x.shape)}")
        params = [p.to(x.dtype) for pair in self._pairs() for p in pair]  # autocast-style: the input dtype
        if self.variant == "channel":
            return mc_attention(x, *params, pool_size_choices=self.pool_sizes, training=self.training,
                                generator=self.generator)
        return mc_spatial_attention(x, *params, pool_sizes=self.pool_sizes, training=self.training,
                                    generator=self.generator)

    def extra_repr(self) -> str:
        extra = f", hidden={self.hidden}" if self.variant == "channel" else ""
        return (f"spatial_dims={self.spatial_dims}, channels={self.channels}{extra}, pool_sizes={self.pool_sizes}, "
                f"variant={self.variant!r}")
