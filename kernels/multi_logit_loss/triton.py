"""Triton kernels and launchers of the fused multi-logit Dice + CE loss (LoMix mixing in-kernel).

Four kernels, two passes over the logits (buffer layouts: :mod:`.layout`; mixing and the in-register
upsampling: :mod:`.mixing`; tiles, boxes and the source-index rule: :mod:`.geometry`):

* ``_mll_stats_kernel`` (pass 1): grid ``(boxes, B, T groups)``; each program walks the voxel tiles of
  its box of one sample, loads every base map's ``(C, BLOCK)`` tile once (a map coarser than the labels
  is read at its own resolution and upsampled in registers), builds its group of up to ``T_BLOCK``
  supervised maps (base + mutants) in registers, takes one ``exp`` per logit for the softmax, and
  accumulates per-(map, class) Dice sums ``I``, ``P``, the label counts ``G``, the CE sums and the
  bad-input counters in registers. It writes its columns of one partial row (no atomics). One T group
  (the LoMix case: 4 maps, 48 supervised maps) reads the maps once; each further group re-reads them.
* ``_mll_finalize_kernel``: one program; sums the partial rows in a fixed order (deterministic),
  applies the weight transform (softplus / normalised / fixed) and writes the result vector and the
  Dice chain coefficients pass 2 needs, ``T_BLOCK`` supervised maps at a time.
* ``_mll_grad_kernel`` (pass 2): grid ``(boxes, B)``; recomputes the supervised maps, writes the
  gradient of every map at the label size once, reduces that of every coarse map to the map's own cells
  in registers (the transpose of the upsampling) and adds it into an fp32 slab private to the program
  (read back only for cells an earlier tile of the program touched; no atomics), and adds the concat /
  attention parameter gradients into a slot row private to the program with fp32 ``tl.atomic_add``
  (only that program's threads add to a slot, in program order, so the sums are bitwise reproducible);
  the launcher sums the rows with one ``torch.sum`` (none with one program).
* ``_mll_gather_kernel``: with several programs per sample (or fp16 / bf16 logits), each coarse-map
  element is the fixed-order sum of the slabs of the boxes that touched it, written in the logits'
  dtype. With one program per sample and fp32 logits the slab is the gradient itself.

The maps reach the kernels as a tuple of tensors (one pointer each, any number of maps); each must be
a contiguous ``(B, C, *S_i)`` tensor of the first map's dtype, ``S_i`` the label size divided by an
integer factor per axis (the input guard makes it so); the factors are a constexpr tuple.
"""
from __future__ import annotations

import math

import triton
import triton.language as tl

import torch

from ..dispatch import gpu_launch_settings, sm_count
from ..registry import register_device_function, register_kernel
from .geometry import Geometry, make_geometry
from .layout import ParamGradLayout, PartialRow, ResultVector, coef_shape
from .mixing import DESC_WIDTH, descriptors, load_maps, mix, mix_grad, ops_mask, source_index

TILE_ELEMENTS = 256  # C_PAD * BLOCK logits per tile on a GPU: 16 classes x 16 voxels at 8 warps builds without spills
INTERP_TILE_ELEMENTS = 1 << 20  # in the interpreter: one tile per sample up to triton's largest tensor
DOT_REDUCE_ABOVE = 1 << 16  # pass 2 reduces a tile to coarse cells by matrix products above this many products
GATHER_BLOCK = 256  # coarse-map elements per program of the gather kernel
NUM_WARPS = 8
T_BLOCK_MAX = 64  # supervised maps per pass-1 program (registers: 2 x C_PAD x T_BLOCK accumulators)
WEIGHT_CODE = {"softplus": 0, "normalized": 1, "fixed": 2}
REDUCE_CODE = {"mean": 0, "sum": 1, "none": 2}
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- jit helpers
@register_device_function
@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@register_device_function
@triton.jit
def _probs(z, g, cmask, cwv, smoothing, C: tl.constexpr, ACT: tl.constexpr, CE_BCE: tl.constexpr,
           CLASS_W: tl.constexpr, SMOOTHING: tl.constexpr, DENSE: tl.constexpr):
    """One (C_PAD, BLOCK) logit tile against its targets ``g`` (one-hot or dense, zero where not counted):
    ``(p, ce, dce)``: the Dice probabilities (ACT 0 softmax, 1 sigmoid, 2 the logits), the per-voxel CE summed
    over classes and its gradient. CE: softmax cross-entropy with target weights ``u_c = w_c ((1 - e) g_c + e / C)``
    (class weights ``cwv``, label smoothing ``e``): ``sum_c u_c (lse - z_c)``, gradient ``q sum_c u_c - u``; or
    (CE_BCE) BCE-with-logits per channel, ``cwv`` its pos_weight: ``(1 - g) z + L softplus(-z)``,
    ``L = 1 + (w - 1) g``, gradient ``(1 - g) - L (1 - q)``."""
    if CE_BCE:
        e = tl.exp(-tl.abs(z))
        inv = 1.0 / (1.0 + e)
        q = tl.where(z >= 0, inv, e * inv)
        if CLASS_W:
            lw = 1.0 + (cwv[:, None] - 1.0) * g
            bce = (1.0 - g) * z + lw * (tl.maximum(-z, 0.0) + tl.log(1.0 + e))
            dce = (1.0 - g) - lw * (1.0 - q)
        else:
            bce = tl.maximum(z, 0.0) - z * g + tl.log(1.0 + e)
            dce = q - g
        q = tl.where(cmask, q, 0.0)
        ce = tl.sum(tl.where(cmask, bce, 0.0), axis=0)
    else:
        zm = tl.where(cmask, z, float("-inf"))
        mx = tl.max(zm, axis=0)
        e = tl.exp(zm - mx[None, :])
        ssum = tl.sum(e, axis=0)
        q = e / ssum[None, :]
        if CLASS_W or SMOOTHING or DENSE:
            u = g
            if SMOOTHING:
                u = (1.0 - smoothing) * u + smoothing / C
            if CLASS_W:
                u = u * cwv[:, None]
            u = tl.where(cmask, u, 0.0)
            usum = tl.sum(u, axis=0)
            ce = (mx + tl.log(ssum)) * usum - tl.sum(u * tl.where(cmask, z, 0.0), axis=0)
            dce = q * usum[None, :] - u
        else:
            ce = mx + tl.log(ssum) - tl.sum(tl.where(g > 0, z, 0.0), axis=0)  # one-hot g
            dce = q - g
    if ACT == 2:
        p = tl.where(cmask, z, 0.0)
    elif (ACT == 0) == (not CE_BCE):  # the CE's own probabilities
        p = q
    else:  # sigmoid Dice beside a softmax CE (MONAI's DiceCELoss with sigmoid and C > 1)
        e2 = tl.exp(-tl.abs(z))
        inv2 = 1.0 / (1.0 + e2)
        p = tl.where(cmask, tl.where(z >= 0, inv2, e2 * inv2), 0.0)
    return p, ce, dce


@register_device_function
@triton.jit
def _labels(y_ptr, b, S, v, vmask, cls, m2, C: tl.constexpr, BINARY: tl.constexpr, HAS_IGNORE: tl.constexpr,
            IGNORE: tl.constexpr, DENSE: tl.constexpr):
    """(labels (BLOCK,), targets g (C_PAD, BLOCK) fp32, keep (BLOCK,): the voxels that count). y: (B, S) integer
    labels, one-hot here (BINARY, a single non-softmax channel: label 1 is the target 1); or DENSE: (B, C, S)
    float targets (one-hot or soft) read as they are. HAS_IGNORE: voxels labelled IGNORE are not kept and their
    g is 0 (IGNORE may be a class too, as MONAI allows)."""
    LBL_OFF: tl.constexpr = 1 if BINARY else 0
    if DENSE:  # (the labels returned are unused: the voxel indices stand in for them)
        y = v
        gf = tl.load(y_ptr + (b * C + cls[:, None]) * S + v[None, :], mask=m2, other=0.0).to(tl.float32)
        keep = vmask
    else:
        y = tl.load(y_ptr + b * S + v, mask=vmask, other=0)  # the labels' own integer type: no wrap-around
        if HAS_IGNORE:
            keep = vmask & (y != IGNORE)
        else:
            keep = vmask
        gf = (((cls[:, None] + LBL_OFF) == y[None, :]) & m2 & keep[None, :]).to(tl.float32)
    return y, gf, keep


@register_device_function
@triton.jit
def _dice_sums(p, gf, SQUARED: tl.constexpr, SOFT_DICE: tl.constexpr):
    """Per-voxel contributions (I, P) to the Dice sums of one tile (p zero where not counted)."""
    if SOFT_DICE:  # MONAI's soft-label form: (|p| + |g| - |p - g|) / 2 (= min(p, g) for p, g >= 0)
        return 0.5 * (tl.abs(p) + tl.abs(gf) - tl.abs(p - gf)), tl.abs(p)
    if SQUARED:
        return p * gf, p * p
    return p * gf, p


@register_device_function
@triton.jit
def _dlogits(z, gf, m2, cmask, a_c, b_c, ce_scale, cwv, smoothing, C: tl.constexpr, ACT: tl.constexpr,
             CE_BCE: tl.constexpr, CLASS_W: tl.constexpr, SMOOTHING: tl.constexpr, DENSE: tl.constexpr,
             SQUARED: tl.constexpr, SOFT_DICE: tl.constexpr):
    """d loss / d z for one supervised map tile (a_c multiplies dI/dp, b_c dP/dp)."""
    p, _ce, dce = _probs(z, gf, cmask, cwv, smoothing, C, ACT, CE_BCE, CLASS_W, SMOOTHING, DENSE)
    if SOFT_DICE:
        dp = a_c[:, None] * (0.5 * (_sign(p) - _sign(p - gf))) + b_c[:, None] * _sign(p)
    elif SQUARED:
        dp = a_c[:, None] * gf + b_c[:, None] * (2.0 * p)
    else:
        dp = a_c[:, None] * gf + b_c[:, None]
    if ACT == 1:
        dz = dp * p * (1.0 - p)
    elif ACT == 0:
        dz = p * (dp - tl.sum(p * dp, axis=0)[None, :])
    else:
        dz = dp
    return tl.where(m2, dz + ce_scale * dce, 0.0)


@register_device_function
@triton.jit
def _weights(w_ptr, tcol, tm, zsum, T: tl.constexpr, WEIGHT_MODE: tl.constexpr):
    """(w_t, d w_t / d raw_t without the normalisation's cross term) of a block of supervised maps."""
    raw = tl.load(w_ptr + tcol, mask=tm, other=0.0).to(tl.float32)
    sp = tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
    sig = 1.0 / (1.0 + tl.exp(-raw))
    if WEIGHT_MODE == 0:
        om = sp
        dom = sig
    elif WEIGHT_MODE == 1:
        om = sp * (T * LN2 / zsum)
        dom = sig * (T * LN2 / zsum)
    else:
        om = raw
        dom = tl.full(raw.shape, 1.0, tl.float32)
    return tl.where(tm, om, 0.0), tl.where(tm, dom, 0.0)


# ----------------------------------------------------------------------------- pass 1
@triton.jit
def _program_box(n_by, n_bx):
    # program (box, b, ...): its sample b, its row `prog` in the per-program buffers (b * boxes + box) and the
    # box's (z, y, x) index in the grid of n_bz x n_by x n_bx boxes
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    prog = b * tl.num_programs(0) + pid
    return pid, b, prog, pid // (n_bx * n_by), (pid // n_bx) % n_by, pid % n_bx


@triton.jit
def _mll_stats_kernel(maps, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, part_ptr, clw_ptr, smoothing,
                      D, H, W, box_z, box_y, box_x, n_by, n_bx,
                      M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                      T_BLOCK: tl.constexpr, BAD_PAD: tl.constexpr, ACT: tl.constexpr, CE_BCE: tl.constexpr,
                      SQUARED: tl.constexpr, OPS_MASK: tl.constexpr, SCALES: tl.constexpr, NEAREST: tl.constexpr,
                      TZ: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr, HAS_IGNORE: tl.constexpr,
                      IGNORE: tl.constexpr, DENSE: tl.constexpr, SOFT_DICE: tl.constexpr, CLASS_W: tl.constexpr,
                      SMOOTHING: tl.constexpr, COUNT_N: tl.constexpr,
                      PART_W: tl.constexpr, PART_I: tl.constexpr, PART_P: tl.constexpr, PART_G: tl.constexpr,
                      PART_CE: tl.constexpr, PART_BAD: tl.constexpr, PART_N: tl.constexpr):
    # maps: M x (B, C, *S_i) logits, S_i = (D, H, W) / SCALES[i]; y: (B, D*H*W) integer labels or (DENSE) (B, C,
    # D*H*W) float targets; desc: (T, DESC_WIDTH) int32 rows (mixing.py); cw/cb/aw/ab: fp32 mixing parameters
    # (reference.py layout); part: (B * boxes, PART_W) fp32 rows; clw: (2, C) fp32 class weights (row 0: CE weight
    # or BCE pos_weight; read when CLASS_W); smoothing: CE label smoothing (SMOOTHING). Program (box, b, T group)
    # walks the (box_z, box_y, box_x) tiles of its box. HAS_IGNORE: voxels labelled IGNORE count in no sum
    # (`keep`). COUNT_N: the first T group sums the CE denominator's share (kept voxels, or their weights).
    BLOCK: tl.constexpr = TZ * TY * TX
    pid, b, prog, bzi, byi, bxi = _program_box(n_by, n_bx)
    t0 = tl.program_id(2) * T_BLOCK
    S = D * H * W
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    lane = tl.arange(0, BLOCK)
    lz = lane // (TY * TX)
    ly = (lane // TX) % TY
    lx = lane % TX
    tcol = tl.arange(0, T_BLOCK)
    midx = tl.arange(0, BAD_PAD)
    BINARY: tl.constexpr = (C == 1) and (ACT != 0)
    N_LBL: tl.constexpr = 2 if BINARY else C
    if CLASS_W:
        cwv = tl.load(clw_ptr + cls, mask=cls < C, other=0.0)
    else:
        cwv = tl.zeros([C_PAD], tl.float32)
    acc_i = tl.zeros([C_PAD, T_BLOCK], tl.float32)
    acc_p = tl.zeros([C_PAD, T_BLOCK], tl.float32)
    acc_ce = tl.zeros([T_BLOCK], tl.float32)
    acc_g = tl.zeros([C_PAD], tl.float32)
    acc_bad = tl.zeros([BAD_PAD], tl.float32)
    acc_n = tl.zeros([BLOCK], tl.float32)
    for it in range(box_z * box_y * box_x):
        pz = (bzi * box_z + it // (box_y * box_x)) * TZ + lz
        py = (byi * box_y + (it // box_x) % box_y) * TY + ly
        px = (bxi * box_x + it % box_x) * TX + lx
        vmask = (pz < D) & (py < H) & (px < W)
        v = (pz * H + py) * W + px
        m2 = cmask & vmask[None, :]
        y, gf, keep = _labels(y_ptr, b, S, v, vmask, cls, m2, C, BINARY, HAS_IGNORE, IGNORE, DENSE)
        xs = load_maps(maps, b, cls, pz, py, px, v, m2, D, H, W, M, C, SCALES, NEAREST)
        mk = cmask & keep[None, :]
        if t0 == 0:  # the first T group counts labels and bad inputs
            if not DENSE:
                acc_bad += tl.where(midx == M, tl.sum((keep & ((y < 0) | (y >= N_LBL))).to(tl.float32), axis=0),
                                    0.0)
            if DENSE and SQUARED:
                acc_g += tl.sum(gf * gf, axis=1)
            elif DENSE and SOFT_DICE:
                acc_g += tl.sum(tl.abs(gf), axis=1)
            else:
                acc_g += tl.sum(gf, axis=1)
            if COUNT_N:
                if CLASS_W and not CE_BCE and not DENSE:  # torch's weighted mean: divided by sum of w[label]
                    acc_n += tl.sum(gf * cwv[:, None], axis=0)
                else:
                    acc_n += keep.to(tl.float32)
            for i in tl.static_range(M):
                if SCALES[i][0] * SCALES[i][1] * SCALES[i][2] == 1:
                    xb = xs[i]
                else:
                    # each element of a coarse map once: at the fine voxel where its block starts
                    nyi = H // SCALES[i][1]
                    nxi = W // SCALES[i][2]
                    org = vmask & (pz % SCALES[i][0] == 0) & (py % SCALES[i][1] == 0) & (px % SCALES[i][2] == 0)
                    xb = tl.load(maps[i] + (b * C + cls[:, None]) * ((D // SCALES[i][0]) * nyi * nxi)
                                 + (((pz // SCALES[i][0]) * nyi + py // SCALES[i][1]) * nxi + px // SCALES[i][2])[None, :],
                                 mask=cmask & org[None, :], other=0.0).to(tl.float32)
                nbad = tl.sum(tl.sum(((xb != xb) | (tl.abs(xb) == float("inf"))).to(tl.float32), axis=1), axis=0)
                acc_bad += tl.where(midx == i, nbad, 0.0)
        for t in range(t0, tl.minimum(t0 + T_BLOCK, T)):
            z, _mx, _den = mix(desc_ptr + t * DESC_WIDTH, xs, maps, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls, b, v, vmask, S,
                               M, C, BLOCK, OPS_MASK, SCALES)
            p, ce, _dce = _probs(z, gf, cmask, cwv, smoothing, C, ACT, CE_BCE, CLASS_W, SMOOTHING, DENSE)
            p = tl.where(mk, p, 0.0)
            here = tcol[None, :] == t - t0
            di, dpp = _dice_sums(p, gf, SQUARED, SOFT_DICE)
            acc_i += tl.where(here, tl.sum(di, axis=1)[:, None], 0.0)
            acc_p += tl.where(here, tl.sum(dpp, axis=1)[:, None], 0.0)
            acc_ce += tl.where(tcol == t - t0, tl.sum(tl.where(keep, ce, 0.0), axis=0), 0.0)
    base = part_ptr + prog * PART_W
    ct = cls[:, None] * T + t0 + tcol[None, :]
    ctm = cmask & (t0 + tcol[None, :] < T)
    tl.store(base + PART_I + ct, acc_i, mask=ctm)
    tl.store(base + PART_P + ct, acc_p, mask=ctm)
    tl.store(base + PART_CE + t0 + tcol, acc_ce, mask=t0 + tcol < T)
    if t0 == 0:
        tl.store(base + PART_G + cls, acc_g, mask=cls < C)
        tl.store(base + PART_BAD + midx, acc_bad, mask=midx <= M)
        if COUNT_N:
            tl.store(base + PART_N, tl.sum(acc_n, axis=0))


# ----------------------------------------------------------------------------- finalize
@triton.jit
def _dice_chain(i, p, g, incl, cls_w, w_t, div, smooth_nr, smooth_dr, cbase, ctT, ctm, T: tl.constexpr,
                C: tl.constexpr, JACCARD: tl.constexpr, REDUCE: tl.constexpr):
    """Store the Dice chain coefficients of one (class, map) block of sums ``i, p, g``: plane 0 ``A = dL/dI``,
    plane 1 ``Bq = dL/dP`` (L: the weighted Dice of the loss, ``incl`` the included classes, ``w_t``
    each map's weight, ``div`` the mean's divisor); REDUCE == 2 also plane 2, the class-weighted Dice terms.
    Returns those terms ``(C_PAD, T_BLOCK)`` (0 for a class not included)."""
    num = 2.0 * i + smooth_nr
    if JACCARD:  # the denominator P + G (Jaccard: 2 (P + G - I)) plus smooth_dr
        den = 2.0 * (p + g[:, None] - i) + smooth_dr
    else:
        den = p + g[:, None] + smooth_dr
    if REDUCE == 2:  # the terms' own derivatives: neither the map weights nor dice_weight scale them
        w_t = w_t * 0.0 + 1.0
    coef = tl.where(incl, cls_w, 0.0)[:, None] / div * w_t[None, :]
    r = tl.where(incl[:, None], num / (den * den), 0.0)
    den = tl.where(incl[:, None], den, 1.0)
    if JACCARD:  # dF/dI = -2/den - 2 num/den^2, dF/dP = 2 num/den^2
        tl.store(cbase + ctT, -coef * (2.0 / den + 2.0 * r), mask=ctm)
        tl.store(cbase + T * C + ctT, coef * (2.0 * r), mask=ctm)
    else:  # dF/dI = -2/den, dF/dP = num/den^2
        tl.store(cbase + ctT, -coef * 2.0 / den, mask=ctm)
        tl.store(cbase + T * C + ctT, coef * r, mask=ctm)
    terms = tl.where(incl[:, None], cls_w[:, None] * (1.0 - num / den), 0.0)
    if REDUCE == 2:
        tl.store(cbase + 2 * T * C + ctT, terms, mask=ctm)
    return terms


@triton.jit
def _mll_finalize_kernel(part_ptr, w_ptr, res_ptr, coef_ptr, clw_ptr, B, n_chunks, n_ce,
                         ce_weight, dice_weight, smooth_nr, smooth_dr,
                         M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                         T_BLOCK: tl.constexpr, BAD_PAD: tl.constexpr, WEIGHT_MODE: tl.constexpr,
                         PER_SAMPLE: tl.constexpr, INCLUDE_BG: tl.constexpr, COUNT_N: tl.constexpr,
                         CE_PER_VOXEL: tl.constexpr, CLASS_W: tl.constexpr, JACCARD: tl.constexpr,
                         REDUCE: tl.constexpr, COEF_PLANES: tl.constexpr,
                         PART_W: tl.constexpr, PART_I: tl.constexpr, PART_P: tl.constexpr, PART_G: tl.constexpr,
                         PART_CE: tl.constexpr, PART_BAD: tl.constexpr, PART_N: tl.constexpr,
                         RES_PER_MAP: tl.constexpr, RES_CE: tl.constexpr, RES_DICE: tl.constexpr,
                         RES_DW: tl.constexpr, RES_CE_SCALE: tl.constexpr, RES_BAD: tl.constexpr):
    # part: (B * n_chunks, PART_W) fp32; w: (T,) raw weights; res: ResultVector; coef: (B or 1, COEF_PLANES, T, C)
    # fp32; clw: (2, C) fp32 class weights (row 1: Dice, read when CLASS_W). n_ce: the CE denominator; with
    # COUNT_N it is summed here instead (N of every row x CE_PER_VOXEL terms). REDUCE: 0 mean, 1 sum (Dice terms
    # summed, n_ce 1), 2 none (sum, and plane 2 of coef holds each (sample, map, class) Dice term)
    cls = tl.arange(0, C_PAD)
    if INCLUDE_BG or C == 1:
        incl = cls < C
    else:
        incl = (cls < C) & (cls >= 1)
    n_incl = tl.sum(incl.to(tl.float32), axis=0)
    if CLASS_W:
        cls_w = tl.load(clw_ptr + C + cls, mask=cls < C, other=0.0)
    else:
        cls_w = tl.where(cls < C, 1.0, 0.0)
    zero = tl.sum(tl.zeros([T_BLOCK], tl.float32), axis=0)  # an fp32 scalar
    zsum = zero + 1.0
    if REDUCE == 0:
        n_div = n_incl
    else:
        n_div = zero + 1.0
    if COUNT_N:  # the CE denominator, in a fixed order; none (no voxel, zero weights): CE and its gradient are 0
        kept = zero
        for r in range(B * n_chunks):
            kept += tl.load(part_ptr + r * PART_W + PART_N)
        n_ce = tl.where(kept > 0, kept * CE_PER_VOXEL, 1.0)
    if WEIGHT_MODE == 1:  # normalised weights need the softplus sum over every supervised map first
        zsum = zero
        for t0 in range(0, T, T_BLOCK):
            tcol = t0 + tl.arange(0, T_BLOCK)
            raw = tl.load(w_ptr + tcol, mask=tcol < T, other=0.0).to(tl.float32)
            sp = tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
            zsum += tl.sum(tl.where(tcol < T, sp, 0.0), axis=0)
    loss = zero
    for t0 in range(0, T, T_BLOCK):
        tcol = t0 + tl.arange(0, T_BLOCK)
        tm = tcol < T
        om, dom = _weights(w_ptr, tcol, tm, zsum, T, WEIGHT_MODE)
        ct = cls[:, None] * T + tcol[None, :]
        ctm = (cls[:, None] < C) & tm[None, :]
        ctT = tcol[None, :] * C + cls[:, None]  # coef[., ., t, c]
        tot_i = tl.zeros([C_PAD, T_BLOCK], tl.float32)
        tot_p = tl.zeros([C_PAD, T_BLOCK], tl.float32)
        tot_g = tl.zeros([C_PAD], tl.float32)
        ce_sum = tl.zeros([T_BLOCK], tl.float32)
        dice = tl.zeros([T_BLOCK], tl.float32)
        for b in range(B):
            acc_i = tl.zeros([C_PAD, T_BLOCK], tl.float32)
            acc_p = tl.zeros([C_PAD, T_BLOCK], tl.float32)
            acc_g = tl.zeros([C_PAD], tl.float32)
            for ch in range(n_chunks):
                base = part_ptr + (b * n_chunks + ch) * PART_W
                acc_i += tl.load(base + PART_I + ct, mask=ctm, other=0.0)
                acc_p += tl.load(base + PART_P + ct, mask=ctm, other=0.0)
                acc_g += tl.load(base + PART_G + cls, mask=cls < C, other=0.0)
                ce_sum += tl.load(base + PART_CE + tcol, mask=tm, other=0.0)
            if PER_SAMPLE:
                if REDUCE == 0:
                    div = n_div * B
                else:
                    div = n_div
                terms = _dice_chain(acc_i, acc_p, acc_g, incl, cls_w, om * dice_weight, div, smooth_nr, smooth_dr,
                                    coef_ptr + b * COEF_PLANES * T * C, ctT, ctm, T, C, JACCARD, REDUCE)
                dice += tl.sum(terms, axis=0) / div
            else:
                tot_i += acc_i
                tot_p += acc_p
                tot_g += acc_g
        if not PER_SAMPLE:
            terms = _dice_chain(tot_i, tot_p, tot_g, incl, cls_w, om * dice_weight, n_div, smooth_nr, smooth_dr,
                                coef_ptr, ctT, ctm, T, C, JACCARD, REDUCE)
            dice = tl.sum(terms, axis=0) / n_div
        ce = ce_sum / n_ce
        per_map = tl.where(tm, ce_weight * ce + dice_weight * dice, 0.0)
        loss += tl.sum(om * per_map, axis=0)
        tl.store(res_ptr + RES_PER_MAP + tcol, per_map, mask=tm)
        tl.store(res_ptr + RES_CE + tcol, ce, mask=tm)
        tl.store(res_ptr + RES_DICE + tcol, dice, mask=tm)
        tl.store(res_ptr + RES_CE_SCALE + tcol, om * ce_weight / n_ce, mask=tm)
        if WEIGHT_MODE != 1:
            tl.store(res_ptr + RES_DW + tcol, dom * per_map, mask=tm)
    if WEIGHT_MODE == 1:
        # d loss / d raw_t = dom_t (l_t - loss / (T ln 2)): needs the loss, so a second sweep over the
        # per-map losses this program stored (the barrier makes every thread's stores visible)
        tl.debug_barrier()
        for t0 in range(0, T, T_BLOCK):
            tcol = t0 + tl.arange(0, T_BLOCK)
            tm = tcol < T
            _om, dom = _weights(w_ptr, tcol, tm, zsum, T, WEIGHT_MODE)
            per_map = tl.load(res_ptr + RES_PER_MAP + tcol, mask=tm, other=0.0)
            tl.store(res_ptr + RES_DW + tcol, dom * (per_map - loss / (T * LN2)), mask=tm)
    midx = tl.arange(0, BAD_PAD)
    bad = tl.zeros([BAD_PAD], tl.float32)
    for r in range(B * n_chunks):
        bad += tl.load(part_ptr + r * PART_W + PART_BAD + midx, mask=midx <= M, other=0.0)
    tl.store(res_ptr + RES_BAD + midx, bad, mask=midx <= M)
    tl.store(res_ptr, loss)


# ----------------------------------------------------------------------------- pass 2
@register_device_function
@triton.jit
def _axis_weights(a0, n_fine, n, NC: tl.constexpr, T_AX: tl.constexpr, S: tl.constexpr, NEAREST: tl.constexpr):
    """One axis of a tile's upsampling adjoint: ``(w (T_AX, NC) fp32, lo, hi)``. The tile's fine coordinates
    ``a0 .. a0 + T_AX - 1`` (those < ``n_fine``) read the coarse cells ``lo .. hi`` (of ``n``); ``w[k, j]`` is the
    weight fine coordinate ``a0 + k`` gives cell ``lo + j``."""
    a = a0 + tl.arange(0, T_AX)
    i0, i1, lam = source_index(a, n, S, NEAREST)
    lo, _i1, _l = source_index(a0, n, S, NEAREST)
    _i0, hi, _l2 = source_index(tl.minimum(a0 + T_AX, n_fine) - 1, n, S, NEAREST)
    j = tl.arange(0, NC)[None, :]
    ok = (a < n_fine)[:, None]
    w = tl.where(ok & (j == (i0 - lo)[:, None]), 1.0 - lam[:, None], 0.0) + \
        tl.where(ok & (j == (i1 - lo)[:, None]), lam[:, None], 0.0)
    return w, lo, hi


@register_device_function
@triton.jit
def _scatter_coarse(slab_ptr, g, p, cls, cmask, tz, ty, tx, bz0, by0, bx0, D, H, W, box_z, box_y, box_x,
                    C: tl.constexpr, C_PAD: tl.constexpr, TZ: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr,
                    SZ: tl.constexpr, SY: tl.constexpr, SX: tl.constexpr, NCZ: tl.constexpr, NCY: tl.constexpr,
                    NCX: tl.constexpr, NEAREST: tl.constexpr, DOT_REDUCE: tl.constexpr):
    """Add tile ``(tz, ty, tx)``'s gradient ``g`` (``(C_PAD, BLOCK)`` fp32 at fine voxels, zero outside the volume)
    of one coarse map into the program's fp32 slab, at the map's own resolution: the transpose of the
    upsampling, one axis at a time (x, y, z) on register tiles, to the ``(NCZ, NCY, NCX)`` cells the tile
    touches. Slab ``p``: ``(C, ez, ey, ex)`` cells from the box's first cell (:mod:`.geometry`). A cell the
    program touched in an earlier tile (raster order) is read, added to and written back; the first touch
    only writes. Deterministic: a fixed order of tiles, no atomics."""
    nz = D // SZ
    ny = H // SY
    nx = W // SX
    wz, loz, hiz = _axis_weights(tz * TZ, D, nz, NCZ, TZ, SZ, NEAREST)
    wy, loy, hiy = _axis_weights(ty * TY, H, ny, NCY, TY, SY, NEAREST)
    wx, lox, hix = _axis_weights(tx * TX, W, nx, NCX, TX, SX, NEAREST)
    # x: (C_PAD * TZ * TY, TX) -> (C_PAD * TZ * TY, NCX); y: -> (C_PAD * TZ, NCY, NCX); z: -> (C_PAD, NCZ, NCY * NCX)
    if DOT_REDUCE:
        # only the interpreter's whole-sample tiles (never a GPU build): there the broadcast products below would
        # exceed triton's largest tensor, so each axis is a matrix product (fp32, "ieee")
        gx = tl.dot(tl.reshape(g, [C_PAD * TZ * TY, TX]), wx, input_precision="ieee")
        gxt = tl.reshape(tl.permute(tl.reshape(gx, [C_PAD * TZ, TY, NCX]), (0, 2, 1)), [C_PAD * TZ * NCX, TY])
        gy = tl.permute(tl.reshape(tl.dot(gxt, wy, input_precision="ieee"), [C_PAD * TZ, NCX, NCY]), (0, 2, 1))
        if TZ * SZ == 1:
            gc = tl.reshape(gy, [C_PAD, NCZ * NCY * NCX])
        else:
            gyt = tl.reshape(tl.permute(tl.reshape(gy, [C_PAD, TZ, NCY * NCX]), (0, 2, 1)), [C_PAD * NCY * NCX, TZ])
            gz = tl.reshape(tl.dot(gyt, wz, input_precision="ieee"), [C_PAD, NCY * NCX, NCZ])
            gc = tl.reshape(tl.permute(gz, (0, 2, 1)), [C_PAD, NCZ * NCY * NCX])
    else:
        gx = tl.sum(tl.reshape(g, [C_PAD * TZ * TY, TX])[:, :, None] * wx[None, :, :], axis=1)
        gy = tl.sum(tl.reshape(gx, [C_PAD * TZ, TY, NCX])[:, :, None, :] * wy[None, :, :, None], axis=1)
        if TZ * SZ == 1:
            gc = tl.reshape(gy, [C_PAD, NCZ * NCY * NCX])
        else:
            gz = tl.sum(tl.reshape(gy, [C_PAD, TZ, NCY * NCX])[:, :, None, :] * wz[None, :, :, None], axis=1)
            gc = tl.reshape(gz, [C_PAD, NCZ * NCY * NCX])
    e = tl.arange(0, NCZ * NCY * NCX)
    cz = loz + e // (NCY * NCX)
    cy = loy + (e // NCX) % NCY
    cx = lox + e % NCX
    zero = e * 0  # (scalar & vector masks are built from vectors: the interpreter promotes scalar booleans)
    valid = ((zero + tz * TZ) < D) & ((zero + ty * TY) < H) & ((zero + tx * TX) < W) & \
        (cz <= hiz) & (cy <= hiy) & (cx <= hix)
    # touched before: by the previous tile along an axis (inside this box) that reaches the cell
    _a, hpz, _b = source_index(tz * TZ - 1, nz, SZ, NEAREST)
    _c, hpy, _d = source_index(ty * TY - 1, ny, SY, NEAREST)
    _e, hpx, _f = source_index(tx * TX - 1, nx, SX, NEAREST)
    first = (((zero + tz) == bz0) | (cz > hpz)) & (((zero + ty) == by0) | (cy > hpy)) & \
        (((zero + tx) == bx0) | (cx > hpx))
    # the slab of this program: cells from the box's first one, extents as geometry.slab_extent
    bloz, _g, _h = source_index(bz0 * TZ, nz, SZ, NEAREST)
    bloy, _i, _j = source_index(by0 * TY, ny, SY, NEAREST)
    blox, _k, _l = source_index(bx0 * TX, nx, SX, NEAREST)
    ez = tl.minimum(nz, (box_z * TZ + SZ - 2) // SZ + 2)
    ey = tl.minimum(ny, (box_y * TY + SY - 2) // SY + 2)
    ex = tl.minimum(nx, (box_x * TX + SX - 2) // SX + 2)
    off = (((p * C + cls[:, None]) * ez + (cz - bloz)[None, :]) * ey + (cy - bloy)[None, :]) * ex + (cx - blox)[None, :]
    msk = cmask & valid[None, :]
    old = tl.load(slab_ptr + off, mask=msk & (first == 0)[None, :], other=0.0)
    tl.debug_barrier()  # every thread has read before any writes (replicated elements)
    tl.store(slab_ptr + off, old + gc, mask=msk)


@triton.jit
def _mll_grad_kernel(maps, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, res_ptr, coef_ptr, gout_ptr,
                     outs, gw_ptr, pg_ptr, clw_ptr, smoothing,
                     D, H, W, box_z, box_y, box_x, n_by, n_bx,
                     M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                     T_BLOCK: tl.constexpr, ACT: tl.constexpr, CE_BCE: tl.constexpr, SQUARED: tl.constexpr,
                     PER_SAMPLE: tl.constexpr,
                     CONCAT_GRAD: tl.constexpr, OPS_MASK: tl.constexpr, SCALES: tl.constexpr, NCELLS: tl.constexpr,
                     NEAREST: tl.constexpr, ANY_COARSE: tl.constexpr, DOT_REDUCE: tl.constexpr, TZ: tl.constexpr,
                     TY: tl.constexpr, TX: tl.constexpr, HAS_IGNORE: tl.constexpr, IGNORE: tl.constexpr,
                     DENSE: tl.constexpr, SOFT_DICE: tl.constexpr, CLASS_W: tl.constexpr, SMOOTHING: tl.constexpr,
                     COEF_PLANES: tl.constexpr, RES_DW: tl.constexpr, RES_CE_SCALE: tl.constexpr,
                     PG_CB: tl.constexpr, PG_AW: tl.constexpr, PG_AB: tl.constexpr, PG_SIZE: tl.constexpr):
    # maps: M x (B, C, *S_i) logits; outs: per map, its gradient (B, C, *S) (logits dtype) for a map at the label
    # size, else its fp32 slabs (B * boxes, C, ez, ey, ex) (the gradient itself with one box per sample, fp32);
    # res: ResultVector; coef: (B or 1, COEF_PLANES, T, C); gout: (1,) upstream grad; gw: (T,) fp32; pg: (B * boxes,
    # PG_SIZE) fp32 zeros, one private row of parameter-gradient slots per program (ParamGradLayout); y, clw,
    # smoothing as pass 1. Voxels labelled IGNORE (HAS_IGNORE) get a zero gradient (written, like every voxel).
    BLOCK: tl.constexpr = TZ * TY * TX
    pid, b, prog, bzi, byi, bxi = _program_box(n_by, n_bx)
    S = D * H * W
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    lane = tl.arange(0, BLOCK)
    lz = lane // (TY * TX)
    ly = (lane // TX) % TY
    lx = lane % TX
    gout = tl.load(gout_ptr).to(tl.float32)
    if (pid == 0) & (b == 0):
        for t0 in range(0, T, T_BLOCK):
            tcol = t0 + tl.arange(0, T_BLOCK)
            tl.store(gw_ptr + tcol, gout * tl.load(res_ptr + RES_DW + tcol, mask=tcol < T, other=0.0),
                     mask=tcol < T)
    if PER_SAMPLE:
        cbase = coef_ptr + b * COEF_PLANES * T * C
    else:
        cbase = coef_ptr
    BINARY: tl.constexpr = (C == 1) and (ACT != 0)
    if CLASS_W:
        cwv = tl.load(clw_ptr + cls, mask=cls < C, other=0.0)
    else:
        cwv = tl.zeros([C_PAD], tl.float32)
    row = (b * C + cls[:, None]) * S
    pg_base = pg_ptr + prog * PG_SIZE
    for it in range(box_z * box_y * box_x):
        tz = bzi * box_z + it // (box_y * box_x)
        ty = byi * box_y + (it // box_x) % box_y
        tx = bxi * box_x + it % box_x
        pz = tz * TZ + lz
        py = ty * TY + ly
        px = tx * TX + lx
        vmask = (pz < D) & (py < H) & (px < W)
        v = (pz * H + py) * W + px
        m2 = cmask & vmask[None, :]
        _y, gf, keep = _labels(y_ptr, b, S, v, vmask, cls, m2, C, BINARY, HAS_IGNORE, IGNORE, DENSE)
        xs = load_maps(maps, b, cls, pz, py, px, v, m2, D, H, W, M, C, SCALES, NEAREST)
        mk = m2 & keep[None, :]
        gs = ()
        for i in tl.static_range(M):
            gs = gs + (tl.zeros([C_PAD, BLOCK], tl.float32),)
        for t in range(T):
            desc = desc_ptr + t * DESC_WIDTH
            z, mx, den = mix(desc, xs, maps, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls, b, v, vmask, S,
                             M, C, BLOCK, OPS_MASK, SCALES)
            a_c = tl.load(cbase + t * C + cls, mask=cls < C, other=0.0) * gout
            b_c = tl.load(cbase + T * C + t * C + cls, mask=cls < C, other=0.0) * gout
            ce_scale = tl.load(res_ptr + RES_CE_SCALE + t) * gout
            dz = _dlogits(z, gf, mk, cmask, a_c, b_c, ce_scale, cwv, smoothing, C, ACT, CE_BCE, CLASS_W, SMOOTHING,
                          DENSE, SQUARED, SOFT_DICE)
            gs = mix_grad(desc, dz, xs, gs, cw_ptr, aw_ptr, ab_ptr, mx, den, pg_base, cls,
                          M, C, BLOCK, OPS_MASK, CONCAT_GRAD, PG_CB, PG_AW, PG_AB)
        for i in tl.static_range(M):
            if SCALES[i][0] * SCALES[i][1] * SCALES[i][2] == 1:
                tl.store(outs[i] + row + v[None, :], gs[i].to(outs[i].dtype.element_ty), mask=m2)
            else:
                _scatter_coarse(outs[i], gs[i], prog, cls, cmask, tz, ty, tx, bzi * box_z, byi * box_y, bxi * box_x,
                                D, H, W, box_z, box_y, box_x, C, C_PAD, TZ, TY, TX, SCALES[i][0], SCALES[i][1],
                                SCALES[i][2], NCELLS[i][0], NCELLS[i][1], NCELLS[i][2], NEAREST, DOT_REDUCE)
        if ANY_COARSE:  # some map is coarse: the next tile reads what this one wrote (other threads)
            tl.debug_barrier()


# ----------------------------------------------------------------------------- gather
@triton.jit
def _mll_gather_kernel(slabs, grads, D, H, W, lz_len, ly_len, lx_len, n_bz, n_by, n_bx,
                       M: tl.constexpr, C: tl.constexpr, SCALES: tl.constexpr, RADII: tl.constexpr,
                       RANKS: tl.constexpr, NEAREST: tl.constexpr, BLOCK_G: tl.constexpr):
    # slabs: per map, pass 2's fp32 slabs (B * boxes, C, ez, ey, ex) (coarse maps; unused otherwise); grads:
    # per map its gradient (B, C, *S_i) in the logits' dtype; l*_len: a box's length in voxels along each axis,
    # n_b*: boxes per sample along each axis. Program (block, b, k) sums the slabs of the
    # boxes that touched each of BLOCK_G elements of coarse map number k (RANKS[i] == k), in a fixed order.
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(2)
    for i in tl.static_range(M):
        if RANKS[i] >= 0:
            if k == RANKS[i]:
                nz = D // SCALES[i][0]
                ny = H // SCALES[i][1]
                nx = W // SCALES[i][2]
                s_i = nz * ny * nx
                e = pid * BLOCK_G + tl.arange(0, BLOCK_G)
                em = e < C * s_i
                c = e // s_i
                cell = e % s_i
                jz = cell // (ny * nx)
                jy = (cell // nx) % ny
                jx = cell % nx
                ez = tl.minimum(nz, (lz_len + SCALES[i][0] - 2) // SCALES[i][0] + 2)
                ey = tl.minimum(ny, (ly_len + SCALES[i][1] - 2) // SCALES[i][1] + 2)
                ex = tl.minimum(nx, (lx_len + SCALES[i][2] - 2) // SCALES[i][2] + 2)
                tz0 = tl.maximum(jz * SCALES[i][0] - SCALES[i][0], 0) // lz_len
                ty0 = tl.maximum(jy * SCALES[i][1] - SCALES[i][1], 0) // ly_len
                tx0 = tl.maximum(jx * SCALES[i][2] - SCALES[i][2], 0) // lx_len
                acc = tl.zeros([BLOCK_G], tl.float32)
                for kz in tl.static_range(RADII[i][0]):
                    bz = tz0 + kz
                    loz, _a, _b = source_index(bz * lz_len, nz, SCALES[i][0], NEAREST)
                    _c, hiz, _d = source_index(tl.minimum(bz * lz_len + lz_len, D) - 1, nz, SCALES[i][0], NEAREST)
                    okz = (bz < n_bz) & (loz <= jz) & (jz <= hiz)
                    for ky in tl.static_range(RADII[i][1]):
                        by = ty0 + ky
                        loy, _e, _f = source_index(by * ly_len, ny, SCALES[i][1], NEAREST)
                        _g, hiy, _h = source_index(tl.minimum(by * ly_len + ly_len, H) - 1, ny, SCALES[i][1], NEAREST)
                        oky = okz & (by < n_by) & (loy <= jy) & (jy <= hiy)
                        for kx in tl.static_range(RADII[i][2]):
                            bx = tx0 + kx
                            lox, _i, _j = source_index(bx * lx_len, nx, SCALES[i][2], NEAREST)
                            _k, hix, _l = source_index(tl.minimum(bx * lx_len + lx_len, W) - 1, nx, SCALES[i][2], NEAREST)
                            ok = em & oky & (bx < n_bx) & (lox <= jx) & (jx <= hix)
                            p = ((b * n_bz + bz) * n_by + by) * n_bx + bx
                            off = (((p * C + c) * ez + jz - loz) * ey + jy - loy) * ex + jx - lox
                            acc += tl.load(slabs[i] + off, mask=ok, other=0.0)
                tl.store(grads[i] + (b * C + c) * s_i + cell, acc.to(grads[i].dtype.element_ty), mask=em)


# ----------------------------------------------------------------------------- launchers
def _sizes(maps, raw_weights):
    """(M, B, C, T, C_PAD, T_BLOCK) of a launch."""
    B, C = maps[0].shape[:2]
    T = raw_weights.numel()
    C_PAD = max(triton.next_power_of_2(C), 2)
    return len(maps), B, C, T, C_PAD, min(max(triton.next_power_of_2(T), 2), T_BLOCK_MAX)


def _geometry(maps, size, B: int, C_PAD: int, nearest: bool) -> Geometry:
    """Tiles of a fixed budget of logits as near-square boxes of voxels. On a GPU: ``TILE_ELEMENTS`` (the
    largest the LoMix builds take without spills) and ~4 programs per SM (split between the samples). In the
    interpreter, which pays per operation and not per element: one program per sample and tiles of up to
    ``INTERP_TILE_ELEMENTS`` (a whole sample at the paper sizes), so the per-program traffic figure of
    ``segfuse bench`` is the whole sample's. Such tiles never run on a GPU (a CUDA tensor always gets the GPU
    settings); the launch cases keep their volumes within a GPU tile, so their interpreter builds are the
    GPU builds (or light ones the compile test builds too)."""
    dev = maps[0].device
    gpu = gpu_launch_settings(dev)
    block = max(16, (TILE_ELEMENTS if gpu else INTERP_TILE_ELEMENTS) // C_PAD)
    programs = max(1, triton.cdiv(4 * sm_count(dev), B)) if gpu else 1
    return make_geometry([tuple(x.shape[2:]) for x in maps], size, block, programs, nearest)


def _launch_geometry(geo: Geometry) -> dict:
    """The size arguments and constexprs pass 1 and pass 2 share."""
    (D, H, W), (TZ, TY, TX) = geo.size3, geo.tile
    return dict(D=D, H=H, W=W, box_z=geo.box[0], box_y=geo.box[1], box_x=geo.box[2], n_by=geo.n_box[1],
                n_bx=geo.n_box[2], SCALES=geo.scales, NEAREST=geo.nearest, TZ=TZ, TY=TY, TX=TX)


ACT_CODE = {"softmax": 0, "sigmoid": 1, "none": 2}


def _voxel_options(target, class_weights, ignore_index, activation, ce_bce, squared, label_smoothing,
                   soft_label) -> dict:
    """The per-voxel loss options of pass 1 and pass 2: constexprs (IGNORE unused without an ignore label), the
    class weights' pointer (a placeholder, never read, without) and the label smoothing."""
    clw = class_weights if class_weights is not None else torch.empty(1, dtype=torch.float32, device=target.device)
    return dict(clw_ptr=clw, smoothing=float(label_smoothing), ACT=ACT_CODE[activation], CE_BCE=bool(ce_bce),
                DENSE=target.is_floating_point(), SOFT_DICE=bool(soft_label) and not squared,
                CLASS_W=class_weights is not None, SMOOTHING=label_smoothing > 0,
                HAS_IGNORE=ignore_index is not None, IGNORE=0 if ignore_index is None else int(ignore_index))


def _label_size(maps, target) -> tuple:
    return tuple(target.shape[-(maps[0].dim() - 2):])


def _params(cw, cb, aw, ab, device):
    """The four mixing parameters; a 1-element placeholder (never read) for an operator not in use."""
    if all(t is not None for t in (cw, cb, aw, ab)):
        return [cw, cb, aw, ab]
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    return [dummy if t is None else t for t in (cw, cb, aw, ab)]


def mll_forward(maps, target, raw_weights, ops, cw, cb, aw, ab, class_weights=None, *, weight_mode, ce_weight,
                dice_weight, activation, ce_bce, squared, batch, include_background, smooth_nr, smooth_dr,
                upsample="linear", ignore_index=None, label_smoothing=0.0, soft_label=False, jaccard=False,
                reduction="mean"):
    """Pass 1 + finalize. ``maps``: M contiguous ``(B, C, *S_i)`` tensors of one dtype, each at the label size
    ``S`` divided by an integer factor per axis (read at their own resolution, upsampled in registers);
    ``target`` ``(B, *S)`` contiguous integer labels (``ignore_index``: a label that counts nowhere, or None) or
    ``(B, C, *S)`` contiguous float targets; parameters and ``class_weights`` ``(2, C)`` fp32 contiguous. Returns
    ``(res, coef)``: ``res`` a :class:`.layout.ResultVector`, ``coef`` :func:`.layout.coef_shape` fp32."""
    M, B, C, T, C_PAD, T_BLOCK = _sizes(maps, raw_weights)
    dev = maps[0].device
    geo = _geometry(maps, _label_size(maps, target), B, C_PAD, upsample == "nearest")
    voxel = _voxel_options(target, class_weights, ignore_index, activation, ce_bce, squared, label_smoothing,
                           soft_label)
    mean = reduction == "mean"
    count_n = mean and (ignore_index is not None or (class_weights is not None and not ce_bce and not voxel["DENSE"]))
    part_row, result = PartialRow(C, T, M), ResultVector(T, M)
    bad_pad = triton.next_power_of_2(M + 1)
    part = torch.empty(B * geo.boxes, part_row.width, dtype=torch.float32, device=dev)
    cw, cb, aw, ab = _params(cw, cb, aw, ab, dev)
    _mll_stats_kernel[(geo.boxes, B, triton.cdiv(T, T_BLOCK))](
        maps=tuple(maps), y_ptr=target, desc_ptr=descriptors(M, ops, dev), cw_ptr=cw, cb_ptr=cb, aw_ptr=aw,
        ab_ptr=ab, part_ptr=part, **_launch_geometry(geo),
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, BAD_PAD=bad_pad, SQUARED=squared,
        OPS_MASK=ops_mask(ops), **voxel, COUNT_N=count_n, **part_row.constexprs(),
        num_warps=NUM_WARPS)
    res = torch.empty(result.size, dtype=torch.float32, device=dev)
    coef = torch.empty(coef_shape(B, T, C, batch, reduction), dtype=torch.float32, device=dev)
    _mll_finalize_kernel[(1,)](
        part_ptr=part, w_ptr=raw_weights, res_ptr=res, coef_ptr=coef, clw_ptr=voxel["clw_ptr"], B=B,
        n_chunks=geo.boxes, n_ce=float(B * geo.voxels * (C if ce_bce else 1)) if mean else 1.0,
        ce_weight=float(ce_weight), dice_weight=float(dice_weight), smooth_nr=float(smooth_nr),
        smooth_dr=float(smooth_dr),
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, BAD_PAD=bad_pad, WEIGHT_MODE=WEIGHT_CODE[weight_mode],
        PER_SAMPLE=not batch, INCLUDE_BG=include_background, COUNT_N=count_n, CE_PER_VOXEL=C if ce_bce else 1,
        CLASS_W=class_weights is not None, JACCARD=bool(jaccard), REDUCE=REDUCE_CODE[reduction],
        COEF_PLANES=coef.shape[1], **part_row.constexprs(), **result.constexprs(), num_warps=8)
    return res, coef


def mll_backward(grad_out, maps, target, raw_weights, ops, cw, cb, aw, ab, res, coef, class_weights=None, *,
                 activation, ce_bce, squared, batch, concat_grad, upsample="linear", ignore_index=None,
                 label_smoothing=0.0, soft_label=False, reduction="mean", **_finalize_options):
    """Pass 2 (+ the gather of coarse maps' partial sums when a sample has several programs, or the logits
    are not fp32). ``grad_out``: ``(1,)``, or with ``reduction="none"`` the ``(B or 1, T, C)`` gradient of the
    Dice terms (folded into the chain coefficients here). The loss options only the forward's finalize reads
    (map weights, smoothing, Jaccard, ...) are in ``res`` / ``coef`` already. Returns ``(grads: M tensors like
    maps, grad_raw_weights (T,) fp32, grad_params (PG_SIZE,) fp32)``."""
    M, B, C, T, C_PAD, T_BLOCK = _sizes(maps, raw_weights)
    dev = maps[0].device
    geo = _geometry(maps, _label_size(maps, target), B, C_PAD, upsample == "nearest")
    voxel = _voxel_options(target, class_weights, ignore_index, activation, ce_bce, squared, label_smoothing,
                           soft_label)
    if reduction == "none":  # d/dz sum_btc g_btc term_btc: each (b, t, c) chain coefficient times its g
        coef = (coef[:, :2] * grad_out.float()[:, None]).contiguous()
        grad_out = torch.ones(1, dtype=torch.float32, device=dev)
    pg_layout = ParamGradLayout(M, C)
    param_grad = ("concat" in ops and concat_grad) or "attention" in ops
    grads = tuple(torch.empty_like(x) for x in maps)
    # coarse maps: pass 2 adds into fp32 slabs, one per program; with one program per sample and fp32 logits
    # the slab is the gradient itself (no gather)
    direct = geo.boxes == 1
    outs = tuple(g if not geo.coarse(i) or (direct and g.dtype == torch.float32)
                 else torch.empty(geo.slab_shape(i, B, C), dtype=torch.float32, device=dev)
                 for i, g in enumerate(grads))
    gather = [i for i in range(M) if outs[i] is not grads[i]]
    gw = torch.empty(T, dtype=torch.float32, device=dev)
    pg = torch.zeros(B * geo.boxes if param_grad else 1, pg_layout.size, dtype=torch.float32, device=dev)
    cw, cb, aw, ab = _params(cw, cb, aw, ab, dev)
    _mll_grad_kernel[(geo.boxes, B)](
        maps=tuple(maps), y_ptr=target, desc_ptr=descriptors(M, ops, dev), cw_ptr=cw, cb_ptr=cb, aw_ptr=aw,
        ab_ptr=ab, res_ptr=res, coef_ptr=coef, gout_ptr=grad_out, outs=outs, gw_ptr=gw, pg_ptr=pg,
        **_launch_geometry(geo),
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, SQUARED=squared, PER_SAMPLE=not batch, **voxel,
        COEF_PLANES=coef.shape[1],
        CONCAT_GRAD=concat_grad and "concat" in ops, OPS_MASK=ops_mask(ops),
        NCELLS=tuple(geo.cells_per_tile(i) for i in range(M)), ANY_COARSE=geo.any_coarse,
        DOT_REDUCE=geo.reduce_products(C_PAD) > DOT_REDUCE_ABOVE,
        RES_DW=ResultVector(T, M).dw, RES_CE_SCALE=ResultVector(T, M).ce_scale,
        **pg_layout.constexprs(), num_warps=NUM_WARPS)
    if gather:
        rank = {i: k for k, i in enumerate(gather)}
        most = max(C * math.prod(geo.map_size3(i)) for i in gather)
        (D, H, W), (lz, ly, lx) = geo.size3, geo.box_length()
        _mll_gather_kernel[(triton.cdiv(most, GATHER_BLOCK), B, len(gather))](
            slabs=outs, grads=grads, D=D, H=H, W=W, lz_len=lz, ly_len=ly, lx_len=lx,
            n_bz=geo.n_box[0], n_by=geo.n_box[1], n_bx=geo.n_box[2], M=M, C=C, SCALES=geo.scales,
            RADII=tuple(geo.gather_radius(i) if i in rank else (1, 1, 1) for i in range(M)),
            RANKS=tuple(rank.get(i, -1) for i in range(M)), NEAREST=geo.nearest, BLOCK_G=GATHER_BLOCK,
            num_warps=4)
    return list(grads), gw, (pg.sum(0) if pg.shape[0] > 1 else pg[0])


register_kernel("mll_stats", _mll_stats_kernel)
register_kernel("mll_finalize", _mll_finalize_kernel)
register_kernel("mll_grad", _mll_grad_kernel)
register_kernel("mll_gather", _mll_gather_kernel)
