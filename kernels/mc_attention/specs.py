"""Launch cases of Monte-Carlo attention: small seeded 2D and 3D problems, training and eval, contiguous and
channels-last, forward and backward.

Each case builds seeded inputs (the SvANet hidden width) and runs :func:`mc_attention` with a seeded
``torch.Generator`` (so both backends draw the same subset), returning the output and the gradients of
x, w1, b1, w2 and b2. The compile check captures the launches at the GPU launch settings; the
interpreter tests run the same cases on both backends and compare them.
"""
from __future__ import annotations

import torch

from ..registry import register_launch_cases
from .function import mc_attention
from .module import hidden_channels

# label: (input shape, pool-size choices, training, channels-last, generator seed). The two 2D cases reach the
# full tiles (GPU 4 x 512 / 64 x 16, interpreter 1 x 4096 / 256 x 16), so the compile check builds those; the
# 3D ones cover IS_3D and eval (no subset). Every case draws k > 1 on CPU.
CASES = {
    "svanet-2d-train": ((2, 3, 40, 110), (1, 2, 3), True, False, 3),
    "svanet-2d-train-cl": ((1, 200, 5, 7), (1, 2, 3), True, True, 4),
    "svanet-3d-train": ((1, 4, 6, 9, 11), (2, 3), True, False, 3),
    "svanet-3d-eval-cl": ((2, 3, 3, 4, 5), (1, 2, 3), False, True, 0),
}


def make_problem(shape, channels_last, dtype=torch.float32, device="cpu", seed=0):
    """Seeded ``(x, w1, b1, w2, b2, grad_y)``; all but grad_y are leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    d, C = len(shape) - 2, shape[1]
    hidden = hidden_channels(C)
    x = torch.randn(shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
    w1 = torch.randn(hidden, C, generator=g) / C ** 0.5
    b1 = torch.randn(hidden, generator=g) * 0.1
    w2 = torch.randn(C, hidden, generator=g) / hidden ** 0.5
    b2 = torch.randn(C, generator=g) * 0.1
    gy = torch.randn(shape, generator=g)
    leaf = lambda t: t.to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    return leaf(x), leaf(w1), leaf(b1), leaf(w2), leaf(b2), gy.to(device=device, dtype=dtype)


def run_problem(x, w1, b1, w2, b2, grad_y, pool_sizes, training, generator=None):
    """``(y, grad x, grad w1, grad b1, grad w2, grad b2)``."""
    y = mc_attention(x, w1, b1, w2, b2, pool_size_choices=pool_sizes, training=training, generator=generator)
    return (y, *torch.autograd.grad(y, [x, w1, b1, w2, b2], grad_y))


def _case(label):
    shape, pool_sizes, training, cl, seed = CASES[label]

    def run(dtype, device):
        *leaves, gy = make_problem(shape, cl, dtype=dtype, device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        return run_problem(*leaves, gy, pool_sizes, training, gen)
    return run


register_launch_cases("mc_attention", {label: _case(label) for label in CASES})
