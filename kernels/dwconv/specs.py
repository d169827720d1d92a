"""Launch cases of the multi-kernel depthwise conv: the ways the models use it, at small sizes.

Each case builds seeded inputs and runs :func:`multi_kernel_dwconv` forward and backward, returning the
output and every gradient. The compile check captures the kernel launches of each case at the GPU
launch settings; the interpreter tests run the same cases on both backends and compare them.
"""
from __future__ import annotations

import torch

from ..registry import register_launch_cases
from .function import multi_kernel_dwconv

# label: (input shape, kernel sizes, mode, identity, bias, channels-last)
CASES = {
    "lgmsnet-lms-2d-3579": ((2, 4, 7, 10), (3, 5, 7, 9), "grouped", False, True, False),
    "fias-dmk-2d-57-summed-cl": ((1, 3, 9, 11), (5, 7), "summed", True, False, True),
    "emcad-mscb-2d-135": ((1, 6, 6, 9), (1, 3, 5), "grouped", False, True, False),
    "lgmsnet-lms-3d-3579": ((1, 4, 2, 3, 4), (3, 5, 7, 9), "grouped", False, True, False),
}


def make_problem(shape, kernel_sizes, mode, bias, channels_last, dtype=torch.float32, device="cpu", seed=0):
    """Seeded ``(x, weights, bias, grad_y)``; x, weights and bias are leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    d, C = len(shape) - 2, shape[1]
    cg = C // len(kernel_sizes) if mode == "grouped" else C
    x = torch.randn(shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
    ws = [torch.randn(cg, 1, *([k] * d), generator=g) / k ** d for k in kernel_sizes]
    b = torch.randn(C, generator=g) if bias else None
    gy = torch.randn(shape, generator=g)
    leaf = lambda t: t.to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    return leaf(x), [leaf(w) for w in ws], (leaf(b) if b is not None else None), gy.to(device=device, dtype=dtype)


def run_problem(x, weights, bias, grad_y, mode, identity):
    """``(y, grad x, grad of each weight, [grad bias])``."""
    y = multi_kernel_dwconv(x, weights, bias, mode=mode, identity=identity)
    leaves = [x, *weights] + ([bias] if bias is not None else [])
    return (y, *torch.autograd.grad(y, leaves, grad_y))


def _case(label):
    shape, ks, mode, identity, bias, cl = CASES[label]

    def run(dtype, device):
        x, ws, b, gy = make_problem(shape, ks, mode, bias, cl, dtype=dtype, device=device)
        return run_problem(x, ws, b, gy, mode, identity)
    return run


register_launch_cases("dwconv", {label: _case(label) for label in CASES})
