"""Bench cases of the fused multi-logit Dice + CE loss (LoMix, 48 supervised maps).

Paper size: Synapse LoMix training step, B=16, K=9 classes, 224x224 labels, 4 decoder logit maps.

* "full res": the 4 maps already at 224x224 (as the released network returns them).
* "native res": the maps at the decoder heads' own resolution (1/32, 1/16, 1/8, 1/4, EMCAD). The fused
  path reads each map at its own resolution and upsamples it in registers (pass 1 and pass 2), and writes
  each map's gradient once at its own resolution; the eager path upsamples with ``F.interpolate`` and then
  builds the 44 mutants with tensor ops.

Minimum traffic (definition used for both rows): forward = read every map (at its own resolution) and the
labels once; backward = write every map's gradient once. The fused path needs a second read of maps and
labels in pass 2 (the Dice gradient needs the global sums first), so its floor is (2 R + W) / (R + W) =
1.5x of this minimum at full resolution (1.57x at native resolution, where the labels weigh more). Labels
are uint8. The interpreter measures the native row at one sample of the paper's 224x224 (its tiles cover
a whole sample, so per-program figures are whole-sample figures; the per-call costs of the LoMix
parameters, partial rows and parameter-gradient slots are then ~0.2x of the minimum).
"""
from __future__ import annotations

import importlib.util
import math

import torch

from .cases import BenchCase, Problem, register_case

_B, _K, _HW, _M = 16, 9, 224, 4
_NATIVE = (32, 16, 8, 4)  # decoder head strides, coarse -> fine


def _size(scale: float, multiple: int):
    """(B, side) with B * side^2 ~ scale * 16 * 224^2 (B shrinks first, then the side; side a multiple
    of ``multiple``)."""
    if scale >= 1.0:
        return _B, _HW
    b = max(1, int(round(_B * scale)))
    side = _HW * math.sqrt(scale * _B / b)
    return b, max(multiple, int(round(side / multiple)) * multiple)


def _build(scale: float, device, dtype, native: bool) -> Problem:
    from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce_reference
    from segfuse.losses import LoMixLoss

    B, side = _size(scale, 32 if native else 8)
    g = torch.Generator(device="cpu").manual_seed(0)
    sides = [side // s for s in _NATIVE] if native else [side] * _M
    maps = [torch.randn(B, _K, s, s, generator=g).to(device=device, dtype=dtype).requires_grad_() for s in sides]
    y = torch.randint(0, _K, (B, side, side), generator=g).to(device=device, dtype=torch.uint8)
    loss_fn = LoMixLoss(_M, _K, 2).to(device)

    def fused_fwd():
        return loss_fn(maps, y)

    def eager_fwd():
        # plain eager PyTorch with plain autograd: the reference formulation, not through the registered op
        kw = {k: v for k, v in loss_fn.kw.items() if k != "validate"}
        return multi_logit_dice_ce_reference(
            maps, y, loss_fn.raw_weights, ops=loss_fn.operators, concat_weight=loss_fn.concat_weight,
            concat_bias=loss_fn.concat_bias, attn_weight=loss_fn.attn_weight, attn_bias=loss_fn.attn_bias, **kw)

    def bwd(out):
        out.backward()

    esz = torch.empty((), dtype=dtype).element_size()
    logit_bytes = sum(B * _K * s * s for s in sides) * esz
    label_bytes = B * side * side
    full = _B * _HW * _HW
    return Problem(
        fused_fwd=fused_fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=bwd,
        min_bytes_fwd=logit_bytes + label_bytes, min_bytes_bwd=logit_bytes,
        scale_to_full=full / (B * side * side), size=f"B={B} K={_K} {side}x{side}, maps {sides}",
        notes=("min fwd = read maps + uint8 labels once; min bwd = write the map gradients once. Fused: "
               "pass 1 + finalize (fwd), pass 2 (+ one partial-sum reduction over programs) (bwd); pass 2 "
               "re-reads maps and labels, so ~1.5x of this minimum is the two-pass floor"
               + ("; coarse maps are read at their own resolution and upsampled in registers, their "
                  "gradients written at their own resolution" if native else "")))


register_case(BenchCase(name="lomix loss 2D (4 maps, full res)", paper_size="B=16 K=9 224x224, 48 maps",
                        build=lambda scale, device, dtype: _build(scale, device, dtype, native=False),
                        interp_scale=1 / 256))
register_case(BenchCase(name="lomix loss 2D (4 maps, native res)",
                        paper_size="B=16 K=9 224x224 labels, maps 7..56, 48 maps",
                        build=lambda scale, device, dtype: _build(scale, device, dtype, native=True),
                        interp_scale=1 / 16))


# ----------------------------------------------------------------------------- MONAI DiceCELoss with its options
_MONAI_B, _MONAI_K, _MONAI_SIDE = 2, 14, 128  # a 3D nnU-Net-style step: 2 patches of 128^3, BTCV's 14 classes


def _build_monai(scale: float, device, dtype) -> Problem:
    """MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, weight=w, label_smoothing=0.1)`` on one 3D logit map:
    segfuse's fused module against MONAI's own (plain PyTorch) as the eager path."""
    from monai.losses import DiceCELoss as MonaiDiceCELoss

    from segfuse.losses import DiceCELoss

    voxels = max(1, int(round(scale * _MONAI_B * _MONAI_SIDE ** 3)))
    side = max(4, int(round(voxels ** (1 / 3))))
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, _MONAI_K, side, side, side, generator=g).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, _MONAI_K, (1, 1, side, side, side), generator=g).to(device=device, dtype=torch.uint8)
    w = (torch.rand(_MONAI_K, generator=g) + 0.5).to(device)
    opts = dict(to_onehot_y=True, softmax=True, weight=w, label_smoothing=0.1)
    ours, theirs = DiceCELoss(validate=False, **opts).to(device), MonaiDiceCELoss(**opts).to(device)
    esz = torch.empty((), dtype=dtype).element_size()
    return Problem(
        fused_fwd=lambda: ours(x, y), fused_bwd=lambda out: out.backward(),
        eager_fwd=lambda: theirs(x, y.long()), eager_bwd=lambda out: out.backward(),
        min_bytes_fwd=x.numel() * esz + y.numel(), min_bytes_bwd=x.numel() * esz,
        scale_to_full=_MONAI_B * _MONAI_SIDE ** 3 / side ** 3, size=f"B=1 K={_MONAI_K} {side}^3",
        notes="min fwd = read the logits + uint8 labels once; min bwd = write the logit gradient once. Eager: "
              "MONAI's own DiceCELoss (one-hot, softmax, weighted CE with smoothing, Dice) under plain autograd; "
              "fused: the class weights and smoothing are per-voxel code in pass 1 / pass 2")


if importlib.util.find_spec("monai") is not None:  # MONAI's loss is this case's eager path (the dev extra)
    register_case(BenchCase(name="MONAI DiceCELoss 3D (class weights, smoothing)",
                            paper_size="B=2 K=14 128^3, weight + label_smoothing",
                            build=_build_monai, interp_scale=1 / 512))
