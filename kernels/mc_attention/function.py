"""Autograd Function, torch.library registration and functional API of Monte-Carlo attention.

Data path (both backends): ``mc_attention`` -> :func:`_guard` (every argument check, once) -> the subset
draw (:func:`draw_subset`: ``torch.randint`` on x's device from the given ``torch.Generator`` or the
global RNG, three raw int64 draws; no host read, so it works under CUDA graphs) ->
``MonteCarloAttentionFunction`` -> ``torch.ops.segfuse.mca_fwd`` / ``mca_bwd`` (registered custom ops
with fake implementations, so ``torch.compile(fullgraph=True)`` traces through) -> dispatch: the
Triton launchers (:mod:`.triton`) or the eager reference (:mod:`.reference`). The Function takes the
backend from :func:`segfuse.kernels.dispatch.backend_for` once, in the forward, and hands it to both ops.
Both backends read the same draw tensor, so a seeded run picks the same subset on either.

The spatial (FIAS-scaffold) variant, :func:`mc_spatial_attention`, is eager torch only.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..dispatch import backend_for
from ..utils import (InputDeviceError, InputShapeError, InputTypeError, InputValueError, check_same, check_shape,
                     check_tensor)
from . import reference

SUBSET_HIGH = 2 ** 31  # raw draws are uniform in [0, 2^31)


# ----------------------------------------------------------------------------- registered ops
@torch.library.custom_op("segfuse::mca_fwd", mutates_args=())
def _mca_fwd_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                subset: Optional[torch.Tensor], pool_sizes: List[int], backend: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .triton import mca_fwd
        return mca_fwd(x, w1, b1, w2, b2, subset, pool_sizes)
    return reference.mca_reference_forward(x, w1, b1, w2, b2, subset, pool_sizes)


@_mca_fwd_op.register_fake
def _(x, w1, b1, w2, b2, subset, pool_sizes, backend):
    N, C = x.shape[:2]
    nc = x.new_empty(N, C, dtype=torch.float32)
    return torch.empty_like(x), nc, torch.empty_like(nc), x.new_empty(1, dtype=torch.int64)


@torch.library.custom_op("segfuse::mca_bwd", mutates_args=())
def _mca_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, subset: Optional[torch.Tensor], desc: torch.Tensor, gate: torch.Tensor,
                count: torch.Tensor, pool_sizes: List[int], backend: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .triton import mca_bwd
        return mca_bwd(grad_y, x, w1, b1, w2, b2, subset, desc, gate, count, pool_sizes)
    return reference.mca_reference_backward(grad_y, x, w1, b1, w2, b2, subset, pool_sizes)


@_mca_bwd_op.register_fake
def _(grad_y, x, w1, b1, w2, b2, subset, desc, gate, count, pool_sizes, backend):
    return (torch.empty_like(x), torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2),
            torch.empty_like(b2))


class MonteCarloAttentionFunction(torch.autograd.Function):
    """``y = x * sigmoid(W2 relu(W1 desc + b1) + b2)``; backward returns grads for x, w1, b1, w2, b2."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, subset, pool_sizes):
        ctx.backend = backend_for(x.device)
        ctx.pool_sizes = list(pool_sizes)
        y, desc, gate, count = torch.ops.segfuse.mca_fwd(x, w1, b1, w2, b2, subset, ctx.pool_sizes, ctx.backend)
        ctx.save_for_backward(x, w1, b1, w2, b2, subset, desc, gate, count)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, b1, w2, b2, subset, desc, gate, count = ctx.saved_tensors
        gx, g1, gb1, g2, gb2 = torch.ops.segfuse.mca_bwd(grad_y, x, w1, b1, w2, b2, subset, desc, gate, count,
                                                         ctx.pool_sizes, ctx.backend)
        return gx, g1, gb1, g2, gb2, None, None


# ----------------------------------------------------------------------------- the random draw
def draw_subset(generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Three raw draws ``(r_k, r_cell, seed)``, int64 in ``[0, 2^31)``, made on ``device`` by ``torch.randint``
    (from ``generator``, or the global RNG when None): no host synchronisation, capturable in a CUDA graph.
    :mod:`.reference` defines how they select the pool size, the cell and the subset."""
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, SUBSET_HIGH, (3,), generator=generator, device=device, dtype=torch.int64)


def _memory_format(x: torch.Tensor):
    return reference._memory_format(x)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x as it is when contiguous or channels-last, else a contiguous copy."""
    return x if x.is_contiguous(memory_format=_memory_format(x)) else x.contiguous()


# ----------------------------------------------------------------------------- functional API
def mc_attention(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 pool_size_choices: Sequence[int] = (1, 2, 3), training: bool = True,
                 generator: Optional[torch.Generator] = None, subset: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Monte-Carlo channel attention (SvANet ``MoCAttention``), 2D and 3D, fused Triton forward and backward.

    Training: the descriptor of each ``(n, c)`` is the mean of ``x`` over a random subset of about
    ``S / k^d`` spatial positions (``k`` drawn from ``pool_size_choices``; the same subset for the whole
    batch and every channel): a Monte-Carlo estimate of global average pooling, as SvANet's shuffle +
    ``k x k`` pool + one cell (the subset rule: :mod:`segfuse.kernels.mc_attention.reference`). Eval:
    global average pooling. Then ``gate = sigmoid(W2 relu(W1 desc + b1) + b2)`` and ``y = x * gate``.

    Args:
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)``, fp32/fp16/bf16, contiguous or channels-last (others are
            made contiguous).
        w1: ``(hidden, C)``; b1: ``(hidden,)``; w2: ``(C, hidden)``; b2: ``(C,)`` (the SE MLP, 1x1 convs as
            Linear weights); x's dtype and device.
        pool_size_choices: the pool sizes ``k`` (positive ints) a training step draws from.
        training: draw a subset (True) or take GAP (False).
        generator: a ``torch.Generator`` on x's device for the draw (None: the global RNG). A seeded
            generator gives the same subset on both backends and run to run.
        subset: optional pre-drawn int64 ``(3,)`` tensor on x's device, values in ``[0, 2^31)`` (see
            :func:`draw_subset`; not read on the host, so not range-checked); overrides ``generator``.
    Returns:
        ``y``: x's shape, dtype and memory format.

    Example:
        >>> x = torch.randn(2, 8, 9, 11)
        >>> w1, b1, w2, b2 = torch.randn(32, 8), torch.randn(32), torch.randn(8, 32), torch.randn(8)
        >>> mc_attention(x, w1, b1, w2, b2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 8, 9, 11])
    """
    pool_sizes = _guard(x, w1, b1, w2, b2, pool_size_choices, training, generator, subset)
    x = _dense(x)
    if training and subset is None:
        subset = draw_subset(generator, x.device)
    return MonteCarloAttentionFunction.apply(x, w1, b1, w2, b2, subset if training else None, pool_sizes)


def check_pool_sizes(name: str, pool_sizes) -> tuple:
    """A non-empty sequence of positive ints (InputValueError otherwise); returned as a tuple."""
    if isinstance(pool_sizes, torch.Tensor) or not isinstance(pool_sizes, (list, tuple)) or not len(pool_sizes) \
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in pool_sizes):
        raise InputValueError(f"{name} must be a non-empty list/tuple of positive ints, got {pool_sizes!r}")
    return tuple(int(k) for k in pool_sizes)


def _check_x(x, name="x"):
    check_tensor(name, x, ndim=(4, 5), layout_hint="(N, C, H, W) or (N, C, D, H, W)")
    if any(v == 0 for v in x.shape[2:]):
        raise InputShapeError(f"{name} must have a non-empty spatial size, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputShapeError(f"{name} must have N >= 1 and C >= 1, got shape {tuple(x.shape)}")


def _check_random(x, training, generator, subset):
    if not isinstance(training, bool):
        raise InputTypeError(f"training must be a bool, got {type(training).__name__}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise InputDeviceError(f"generator is on {generator.device} but x is on {x.device}; the subset is drawn "
                                   "on x's device, so pass a generator of that device")
    if subset is not None:
        check_tensor("subset", subset, ndim=1, dtypes=(torch.int64,), layout_hint="(3,) raw draws")
        check_shape("subset", subset, (3,), "(r_k, r_cell, seed), see draw_subset")
        check_same("subset", subset, "x", x, dtype=False)


def _guard(x, w1, b1, w2, b2, pool_size_choices, training, generator, subset) -> tuple:
    """Every check of the public arguments, once (both backends); returns the pool sizes as a tuple."""
    _check_x(x)
    C = x.shape[1]
    check_tensor("w1", w1, ndim=2, layout_hint="(hidden, C)")
    hidden = w1.shape[0]
    for name, t, shape in (("w1", w1, (hidden, C)), ("b1", b1, (hidden,)), ("w2", w2, (C, hidden)),
                           ("b2", b2, (C,))):
        check_tensor(name, t)
        check_same(name, t, "x", x)
        check_shape(name, t, shape, f"for x with C = {C} channels and hidden = {hidden} (w1 rows)")
    if hidden < 1:
        raise InputShapeError(f"w1 must have at least one row (hidden >= 1), got shape {tuple(w1.shape)}")
    pool_sizes = check_pool_sizes("pool_size_choices", pool_size_choices)
    _check_random(x, training, generator, subset)
    return pool_sizes


def mc_spatial_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         pool_sizes: Sequence[int] = (1, 2, 3), training: bool = True,
                         generator: Optional[torch.Generator] = None, subset: Optional[torch.Tensor] = None
                         ) -> torch.Tensor:
    """FIAS-scaffold Monte-Carlo attention, a **spatial** gate; eager torch only (no Triton kernel, both
    backends run the same torch ops).

    The channel-mean map is average-pooled to ``p^d`` for each ``p`` in ``pool_sizes`` and resized back
    (bilinear / trilinear, ``align_corners=False``); training picks one of them from the same kind of
    draw as :func:`mc_attention` (``pool_sizes[subset[0] % len]``, on the device), eval averages them;
    ``gate = sigmoid(weight * map + bias)`` (a 1x1 conv 1 -> 1), ``y = x * gate``.

    Args:
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)``; weight, bias: ``(1,)``, x's dtype and device.
    """
    _check_x(x)
    for name, t in (("weight", weight), ("bias", bias)):
        check_tensor(name, t)
        check_same(name, t, "x", x)
        check_shape(name, t, (1,), "(the 1x1 conv 1 -> 1 of the spatial gate)")
    sizes = check_pool_sizes("pool_sizes", pool_sizes)
    _check_random(x, training, generator, subset)
    if training and subset is None:
        subset = draw_subset(generator, x.device)
    return reference.mc_spatial_attention_reference(x, weight, bias, subset if training else None, sizes)
