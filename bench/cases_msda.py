"""Bench cases of multi-scale deformable attention (``ms_deform_attn``), 2D and 3D.

* 3D MaskMed FSAD encoder: N=2, M=8 heads, Dh=32, levels 32^3, 16^3, 8^3, 4^3 (S = 37,440), P=4,
  queries = the tokens of the three coarse levels (Q = 4,672).
* 2D Deformable-DETR encoder: N=2, M=8, Dh=32, levels 100x150, 50x75, 25x38, 13x19 (S = 19,947), P=4,
  queries = all tokens.

Locations as the module makes them at initialisation plus noise: each query's reference point is its
own voxel/pixel centre, offsets = the head's direction x (p + 1) plus N(0, 0.5) pixels, divided by the
level size (some samples fall outside their level). Locations and weights are fp32 (``E_s = 4``).

Minimum traffic: forward = read value, locations and weights once, write the output once; backward =
read value, grad_out, locations and weights once, write grad_value (value dtype), grad_locations and
grad_weights once. The atomic backward adds an fp32 grad_value buffer (zero fill + atomics + cast; in
fp32 the cast is skipped); the deterministic one writes per-corner keys/coefficients, sorts them and
gathers. Each case comes twice: with the default (atomic) backward and with ``deterministic=True``.

Reduced size for the interpreter: one batch element and one head at the full spatial size and all
queries; every (n, head) pair is an identical, independent problem (its own value slice, locations and
output), so the figures scale exactly by ``N * M = 16``.
"""
from __future__ import annotations

import math

import torch

from .cases import BenchCase, Problem, register_case

_N, _M, _DH, _P = 2, 8, 32, 4
_LEVELS_3D = [(32, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]
_LEVELS_2D = [(100, 150), (50, 75), (25, 38), (13, 19)]


def _centres(shape, device):
    """Normalised (x, y[, z]) centres of a level's tokens, row-major: ``(prod(shape), d)``."""
    axes = [(torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s for s in shape]
    grid = torch.meshgrid(*axes, indexing="ij")  # (z,) y, x
    return torch.stack([g.reshape(-1) for g in reversed(grid)], -1)


def _problem(levels, query_levels, scale, device, dtype, deterministic):
    from segfuse.kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

    n, m = (_N, _M) if scale >= 1 else (1, 1)
    d, L = len(levels[0]), len(levels)
    S = sum(math.prod(s) for s in levels)
    g = torch.Generator(device="cpu").manual_seed(0)
    ref = torch.cat([_centres(levels[i], "cpu") for i in query_levels])  # (Q, d)
    Q = ref.shape[0]
    th = torch.arange(m, dtype=torch.float32) * (2 * math.pi / _M)
    dirs = torch.stack([th.cos(), th.sin()] if d == 2 else [th.cos(), th.sin() * th.cos(), th.sin() * th.sin()], -1)
    dirs = dirs / dirs.abs().max(-1, keepdim=True)[0]  # (m, d)
    pix = dirs[:, None, None, :] * torch.arange(1, _P + 1, dtype=torch.float32)[None, None, :, None]  # (m,1,P,d)
    off = pix[None, None] + 0.5 * torch.randn(n, Q, m, L, _P, d, generator=g)
    size = torch.tensor([list(reversed(s)) for s in levels], dtype=torch.float32)  # (L, d) = (W, H[, D])
    loc = ref[None, :, None, None, None, :] + off / size[None, None, None, :, None, :]
    attn = torch.softmax(torch.randn(n, Q, m, L * _P, generator=g), -1).view(n, Q, m, L, _P)
    value = torch.randn(n, S, m, _DH, generator=g)
    grad_out = torch.randn(n, Q, m * _DH, generator=g)
    value = value.to(device=device, dtype=dtype).requires_grad_()
    loc = loc.to(device).requires_grad_()
    attn = attn.to(device).requires_grad_()
    grad_out = grad_out.to(device=device, dtype=dtype)
    leaves = [value, loc, attn]

    def clear():
        for t in leaves:
            t.grad = None

    def fused_fwd():
        clear()
        return ms_deform_attn(value, levels, None, loc, attn, deterministic=deterministic)

    def eager_fwd():
        clear()
        return ms_deform_attn_reference(value, levels, loc, attn.to(dtype))

    def bwd(out):
        out.backward(grad_out)

    E = value.element_size()
    v_bytes = n * S * m * _DH * E
    la_bytes = n * Q * m * L * _P * (d + 1) * 4
    o_bytes = n * Q * m * _DH * E
    return Problem(fused_fwd=fused_fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=bwd,
                   min_bytes_fwd=v_bytes + la_bytes + o_bytes,
                   min_bytes_bwd=2 * v_bytes + 2 * la_bytes + o_bytes,
                   scale_to_full=(_N * _M) / (n * m),
                   size=f"N={n} M={m} Dh={_DH} Q={Q} S={S} L={L} P={_P}",
                   notes=("min fwd = value + loc + weights read once, output written once; min bwd = value, "
                          "grad_out, loc, weights read once, grad value / loc / weights written once; bwd "
                          + ("deterministic (keys + sort + gather)" if deterministic else "fp32 atomics")))


def _register(name, paper, levels, query_levels, interp_scale):
    for det in (False, True):
        register_case(BenchCase(
            name=name + (" det" if det else ""), paper_size=paper + (", deterministic bwd" if det else ""),
            build=lambda scale, device, dtype, det=det: _problem(levels, query_levels, scale, device, dtype, det),
            interp_scale=interp_scale))


_register("msda 3D MaskMed", "N=2 M=8 Dh=32, levels 32^3..4^3, P=4, Q=4672 (3 coarse levels)",
          _LEVELS_3D, (1, 2, 3), 1 / 16)
_register("msda 2D DETR enc", "N=2 M=8 Dh=32, levels 100x150..13x19, P=4, Q=S=19947",
          _LEVELS_2D, (0, 1, 2, 3), 1 / 16)
