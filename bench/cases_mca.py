"""Bench cases of Monte-Carlo attention (SvANet ``MoCAttention``, channel gate), training mode.

* MCA 2D: N=8, C=64, 128x128 (hidden 32).
* MCA 3D: N=2, C=32, 64^3 (hidden 32).

Fused: :class:`segfuse.kernels.MonteCarloAttention` with a seeded generator (forward: pool + scale
kernels; backward: dot + scale kernels; the draw, partial sums and the SE MLP are glue). Eager:
SvANet's recipe (:func:`segfuse.kernels.mc_attention.mc_attention_svanet`): ``torch.randperm`` of the
positions, a gather copy of ``x`` in that order, adaptive average pool to ``k^d`` (``k = 2``), one cell,
the SE MLP, ``x * gate``; autograd backward.

Minimum traffic (the two dependent passes the gate forces; each pass streams the activation once):
forward = read ``x`` for the descriptor, read ``x`` again and write ``y`` (3 N E); backward = read
``grad_y`` and ``x`` for ``sum(grad_y * x)``, read ``grad_y`` again and write ``grad_x`` (4 N E). With an
``(n, c)`` plane kept on chip between the passes the floor would be 2 N E / 3 N E.

Reduced size for the interpreter: one batch item and 8 (2D) / 4 (3D) channels at the full spatial size;
every ``(n, c)`` plane is an identical streaming problem (the subset depends on the position only), so
traffic scales by ``N C / (n c)`` (the eager ``randperm`` of ``S`` int64 indices is scaled with it, a slight
over-count of the eager figure).
"""
from __future__ import annotations

import math

import torch

from .cases import BenchCase, Problem, register_case


def _problem(full_shape, scale, device, dtype):
    from segfuse.kernels import MonteCarloAttention
    from segfuse.kernels.mc_attention import mc_attention_svanet

    n_full, c_full, *spatial = full_shape
    sd = len(spatial)
    n, c = (n_full, c_full) if scale >= 1 else (1, 8 if sd == 2 else 4)
    S = math.prod(spatial)
    m = MonteCarloAttention(sd, c).to(device=device, dtype=dtype).train()
    m.generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, *spatial, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    leaves = [x, *m.parameters()]

    def clear():
        for t in leaves:
            t.grad = None

    def fused_fwd():
        clear()
        return m(x)

    def eager_fwd():
        clear()
        perm = torch.randperm(S, device=device)
        return mc_attention_svanet(x, m.weight1, m.bias1, m.weight2, m.bias2, k=2, cell=1, perm=perm)

    def bwd(y):
        y.backward(g)

    nbytes = x.numel() * x.element_size()
    return Problem(fused_fwd=fused_fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=bwd,
                   min_bytes_fwd=3 * nbytes, min_bytes_bwd=4 * nbytes,
                   scale_to_full=(n_full * c_full) / (n * c),
                   size=f"{n}x{c}x" + "x".join(map(str, spatial)),
                   notes="min: fwd reads x twice (descriptor, gate) and writes y; bwd reads dy and x, dy again, "
                         "writes dx (two dependent passes each; the MLP is negligible); eager = SvANet randperm "
                         "shuffle + gather + adaptive pool + cell + multiply, k=2")


register_case(BenchCase(
    name="MCA 2D", paper_size="N=8 C=64 128x128, training (k in 1/2/3), fwd+bwd",
    build=lambda scale, device, dtype: _problem((8, 64, 128, 128), scale, device, dtype),
    interp_scale=1 / 64))

register_case(BenchCase(
    name="MCA 3D", paper_size="N=2 C=32 64^3, training (k in 1/2/3), fwd+bwd",
    build=lambda scale, device, dtype: _problem((2, 32, 64, 64, 64), scale, device, dtype),
    interp_scale=1 / 16))
