"""MaskMed bench case: the FSAD transformer (``models/blocks/fsad.py``), forward + backward.

The block MaskMed puts between its encoder and decoder: value projections of all five encoder stages,
three post-norm deformable encoder layers whose queries are the tokens of the three coarsest stages,
output projections. Fused path: the deformable attention runs the Triton op (interpreter on CPU),
everything else is ordinary aten. Eager path: the same block with the op on Deformable-DETR's per-level
``grid_sample`` reference (what CoTr and the unofficial MaskMed approximations use). Both are counted
the same way as the op rows (Triton kernels by the interpreter hook, aten ops by the dispatch counter).

Paper size: N=2, a 128^3 CT patch, encoder widths 32/64/128/256/320 at 128^3 .. 8^3 (the default
MaskMed encoder), FSAD defaults (hidden 192, 8 heads, 4 points, 3 layers, 3 query stages, dropout 0
here so both paths see the same numbers). Reduced size for the interpreter: N=1 and a 32^3 patch
(stages 32^3 .. 2^3); activation traffic scales with N x voxels (x128), the weights (~1.5 MB) do not.
"""
from __future__ import annotations

from unittest import mock

import torch

from segfuse.kernels.ms_deform_attn import module as msda_module

from .cases import BenchCase, Problem, register_case

_WIDTHS = (32, 64, 128, 256, 320)


def _pytorch_core(value, spatial_shapes, level_start_index, loc, weights, deterministic=False, softmax=False):
    """``ms_deform_attn``'s signature on Deformable-DETR's ``ms_deform_attn_core_pytorch`` (per-level
    ``grid_sample``), differentiated by plain autograd."""
    from segfuse.kernels.ms_deform_attn.reference import ms_deform_attn_reference, softmax_levels_points

    return ms_deform_attn_reference(value, spatial_shapes, loc, softmax_levels_points(weights) if softmax else weights)


def _fsad(scale, device, dtype):
    from segfuse.kernels import force_backend
    from segfuse.models.blocks.fsad import FSADTransformer

    n_full, s_full = 2, 128
    n, s = (n_full, s_full) if scale >= 1 else (1, 32)
    torch.manual_seed(0)
    block = FSADTransformer(_WIDTHS, dropout=0.0).to(device=device, dtype=dtype).train()
    sizes = [s >> i for i in range(len(_WIDTHS))]
    feats = [torch.randn(n, c, z, z, z, device=device, dtype=dtype, requires_grad=True)
             for c, z in zip(_WIDTHS, sizes)]
    g = [torch.randn(n, c, z, z, z, device=device, dtype=dtype) for c, z in zip(_WIDTHS, sizes)]

    def clear():
        for p in list(block.parameters()) + feats:
            p.grad = None

    def fwd():
        clear()
        return block(feats)

    def bwd(out):
        torch.autograd.backward(out[2:], g[2:])

    def eager_fwd():
        # Deformable-DETR's pure-PyTorch core with plain autograd (as the op rows' eager column), not the
        # registered op's reference backend (a torch.func.vjp the dispatch counter cannot look into)
        with force_backend("reference"), mock.patch.object(msda_module, "ms_deform_attn", _pytorch_core):
            return fwd()

    def eager_bwd(out):
        bwd(out)

    in_bytes = sum(f.numel() for f in feats) * feats[0].element_size()
    return Problem(fused_fwd=fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=eager_bwd,
                   min_bytes_fwd=in_bytes, min_bytes_bwd=in_bytes,
                   scale_to_full=(n_full * s_full ** 3) / (n * s ** 3),
                   size=f"N={n} {s}^3..{sizes[-1]}^3, widths {'/'.join(map(str, _WIDTHS))}",
                   notes="FSAD block forward + backward (3 layers, 3 query stages, values from all 5 stages); "
                         "no analytic floor for a block: compare the fused column with eager "
                         "(per-level grid_sample)", has_floor=False)


register_case(BenchCase(name="MaskMed FSAD layer", paper_size="N=2 128^3 patch, 5 stages, hidden 192, M=8 P=4, 3 layers",
                        build=_fsad, interp_scale=0.0))
