"""Launch cases of multi-scale deformable attention: small seeded 2D and 3D problems, forward and backward.

Each case builds inputs with some sampling points partly or wholly outside their level and runs
:func:`ms_deform_attn` forward and backward (atomic and deterministic grad_value paths), returning the
output and the three gradients. The compile check captures the launches at the GPU launch settings; the
interpreter tests run the same cases on both backends and compare them.
"""
from __future__ import annotations

import torch

from ..registry import register_launch_cases
from .function import ms_deform_attn

# label: (N, Q, M, Dh, level shapes, P, deterministic, locations/weights in the activation dtype,
#         fused softmax (the weights are logits))
CASES = {
    "2d-L2-P1-D8": (1, 5, 2, 8, [(5, 7), (3, 2)], 1, False, False, False),
    "2d-L4-P4-D32-det": (2, 6, 2, 32, [(6, 9), (3, 5), (2, 3), (1, 1)], 4, True, False, False),
    "2d-L3-P3-D24-act-loc": (1, 7, 3, 24, [(4, 5), (2, 3), (1, 2)], 3, False, True, False),
    "3d-L2-P2-D16-det": (1, 4, 2, 16, [(3, 4, 5), (2, 2, 3)], 2, True, False, False),
    "3d-L3-P4-D32": (1, 5, 2, 32, [(4, 4, 4), (2, 3, 2), (1, 1, 1)], 4, False, False, False),
    "3d-L3-P3-D8-det-act-loc": (2, 3, 1, 8, [(2, 3, 4), (2, 2, 2), (1, 2, 1)], 3, True, True, False),
    "3d-L2-P2-D256": (1, 3, 1, 256, [(2, 3, 3), (1, 2, 2)], 2, False, False, False),
    "2d-L2-P2-D256-det": (1, 3, 1, 256, [(3, 4), (2, 1)], 2, True, False, False),
    "2d-L4-P4-D32-softmax": (1, 6, 2, 32, [(6, 9), (3, 5), (2, 3), (1, 1)], 4, False, False, True),
    "3d-L3-P4-D32-det-softmax": (1, 5, 2, 32, [(4, 4, 4), (2, 3, 2), (1, 1, 1)], 4, True, False, True),
    "3d-L2-P4-D256-softmax": (1, 3, 1, 256, [(2, 3, 3), (1, 2, 2)], 4, False, False, True),
}


def make_problem(N, Q, M, Dh, shapes, P, dtype=torch.float32, device="cpu", seed=0, loc_dtype=torch.float32):
    """Seeded ``(value, loc, attn, grad_out)``; locations in [-0.15, 1.15] (some corners and some whole
    samples outside the level), a few exactly on the level borders 0 and 1. value / loc / attn are leaves
    that require grad; loc and attn in ``loc_dtype`` (fp32 by default: the op computes them in fp32 for
    every value dtype). With ``loc_dtype=None`` they follow ``dtype`` and hold multiples of 1/64, exact
    in fp16 and bf16, so an fp32 run of the same seed sees the same values."""
    g = torch.Generator().manual_seed(seed)
    d = len(shapes[0])
    L = len(shapes)
    S = sum(int(torch.tensor(s).prod()) for s in shapes)
    value = torch.randn(N, S, M, Dh, generator=g)
    loc = torch.rand(N, Q, M, L, P, d, generator=g) * 1.3 - 0.15
    flat = loc.view(-1)
    flat[::7] = 0.0
    flat[3::11] = 1.0
    attn = torch.rand(N, Q, M, L, P, generator=g)
    grad_out = torch.randn(N, Q, M * Dh, generator=g)
    if loc_dtype is None:
        loc, attn, loc_dtype = (loc * 64).round() / 64, (attn * 64).round() / 64, dtype
    leaf = lambda t, dt: t.to(device=device, dtype=dt).requires_grad_()  # noqa: E731
    return (leaf(value, dtype), leaf(loc, loc_dtype), leaf(attn, loc_dtype), grad_out.to(device=device, dtype=dtype))


def level_start_index(shapes):
    out, s = [], 0
    for sh in shapes:
        out.append(s)
        n = 1
        for v in sh:
            n *= v
        s += n
    return out


def run_problem(value, shapes, loc, attn, grad_out, deterministic, softmax=False):
    """``(out, grad value, grad loc, grad attn)``."""
    out = ms_deform_attn(value, shapes, level_start_index(shapes), loc, attn, deterministic=deterministic,
                         softmax=softmax)
    return (out, *torch.autograd.grad(out, [value, loc, attn], grad_out))


def _case(label):
    N, Q, M, Dh, shapes, P, det, act_loc, softmax = CASES[label]

    def run(dtype, device):
        v, loc, a, go = make_problem(N, Q, M, Dh, shapes, P, dtype=dtype, device=device,
                                     loc_dtype=None if act_loc else torch.float32)
        return run_problem(v, shapes, loc, a, go, det, softmax)
    return run


register_launch_cases("ms_deform_attn", {label: _case(label) for label in CASES})
