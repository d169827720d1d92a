"""Bench cases for the multi-kernel depthwise conv at the seed papers' training sizes.

* LMS 2D (LGMSNet): N=8, C=64, 256x256, grouped kernels 3/5/7/9 with bias.
* DMK 2D (FIAS): N=8, C=32, 128x128 (the first DMK stage, 1/2 resolution), ``x + DW5(x) + DW7(x)``.

Reduced size for the interpreter: one image and one channel per kernel group at the full spatial
size (2D); traffic scales linearly in N*C (every (n, c) plane is an identical problem), so the figures
are multiplied by ``N*C / (n*c)``. The 3D case (opt-in: ``--cases "dwconv LMS 3D"``, minutes in the
interpreter) is measured on a 16^3 volume and scaled by voxels too; its depth halo is relatively
larger there than at 64^3, so its per-program ratio is an upper bound.
"""
from __future__ import annotations

import torch

from segfuse.kernels import MultiKernelDWConv, multi_kernel_dwconv_reference

from .cases import BenchCase, Problem, register_case


def _dwconv_problem(full_shape, kernel_sizes, mode, bias, scale, device, dtype):
    n_full, c_full, *spatial = full_shape
    groups = len(kernel_sizes) if mode == "grouped" else 1
    n, c = (n_full, c_full) if scale >= 1 else (1, groups)
    sd = len(spatial)
    full_voxels = 1
    for v in spatial:
        full_voxels *= v
    if scale < 1 and sd == 3:  # the interpreter cannot afford 64^3 x 1224 taps: measure a 16^3 volume
        spatial = [16] * 3
    voxels = 1
    for v in spatial:
        voxels *= v
    m = MultiKernelDWConv(sd, c, kernel_sizes, mode=mode, bias=bias).to(device=device, dtype=dtype)
    x = torch.randn(n, c, *spatial, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    params = [x, *m.parameters()]

    def clear():
        for p in params:
            p.grad = None

    def fused_fwd():
        clear()
        return m(x)

    def eager_fwd():
        clear()
        return multi_kernel_dwconv_reference(x, list(m.weights), m.bias, mode=mode, identity=m.identity)

    def bwd(y):
        y.backward(g)

    nbytes = x.numel() * x.element_size()
    return Problem(fused_fwd=fused_fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=bwd,
                   min_bytes_fwd=2 * nbytes, min_bytes_bwd=3 * nbytes,
                   scale_to_full=(n_full * c_full * full_voxels) / (n * c * voxels),
                   size=f"{n}x{c}x" + "x".join(map(str, spatial)),
                   notes="min: fwd reads x, writes y; bwd reads dy and x, writes dx (weights negligible)")


register_case(BenchCase(
    name="dwconv LMS 2D", paper_size="N=8 C=64 256x256, k=3/5/7/9 grouped, bias",
    build=lambda scale, device, dtype: _dwconv_problem((8, 64, 256, 256), (3, 5, 7, 9), "grouped", True,
                                                        scale, device, dtype),
    interp_scale=0.0))

register_case(BenchCase(
    name="dwconv DMK 2D", paper_size="N=8 C=32 128x128, x + DW5 + DW7 summed",
    build=lambda scale, device, dtype: _dwconv_problem((8, 32, 128, 128), (5, 7), "summed", False,
                                                        scale, device, dtype),
    interp_scale=0.0))

register_case(BenchCase(
    name="dwconv LMS 3D", paper_size="N=2 C=32 64^3, k=3/5/7/9 grouped, bias",
    build=lambda scale, device, dtype: _dwconv_problem((2, 32, 64, 64, 64), (3, 5, 7, 9), "grouped", True,
                                                        scale, device, dtype),
    interp_scale=0.0, slow_in_interpreter=True))
