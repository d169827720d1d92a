"""Triton kernels and launchers of the fused multi-logit Dice + CE loss (LoMix mixing in-kernel).

Three kernels, two passes over the logits (buffer layouts: :mod:`.layout`; mixing: :mod:`.mixing`):

* ``_mll_stats_kernel`` (pass 1): grid ``(chunks, B, T groups)``; each program walks its voxel tiles,
  loads every base map's ``(C, BLOCK)`` tile once, builds its group of up to ``T_BLOCK`` supervised
  maps (base + mutants) in registers, takes one ``exp`` per logit for the softmax, and accumulates
  per-(map, class) Dice sums ``I``, ``P``, the label counts ``G``, the CE sums and the bad-input
  counters in registers. It writes its columns of one partial row (no atomics). One T group (the
  LoMix case: 4 maps, 48 supervised maps) reads the maps once; each further group re-reads them.
* ``_mll_finalize_kernel``: one program; sums the partial rows in a fixed order (deterministic),
  applies the weight transform (softplus / normalised / fixed) and writes the result vector and the
  Dice chain coefficients pass 2 needs, ``T_BLOCK`` supervised maps at a time.
* ``_mll_grad_kernel`` (pass 2): grid ``(chunks, B)``; recomputes the supervised maps, writes every
  base map's gradient once, and adds the concat / attention parameter gradients into a slot row
  private to the program with fp32 ``tl.atomic_add`` (only that program's threads add to a slot, in
  program order, so the sums are bitwise reproducible); the launcher sums the rows with one
  ``torch.sum``.

The maps reach the kernels as a tuple of tensors (one pointer each, any number of maps); each must be
a contiguous ``(B, C, *S)`` tensor of the first map's shape and dtype (the input guard makes it so).
"""
from __future__ import annotations

import triton
import triton.language as tl

import torch

from ..dispatch import gpu_launch_settings, sm_count
from ..registry import register_device_function, register_kernel
from .layout import ParamGradLayout, PartialRow, ResultVector
from .mixing import DESC_WIDTH, descriptors, load_maps, mix, mix_grad, ops_mask

TILE_ELEMENTS = 256  # C_PAD * BLOCK logits per tile: 16 classes x 32 voxels at 8 warps builds without spills
NUM_WARPS = 8
T_BLOCK_MAX = 64  # supervised maps per pass-1 program (registers: 2 x C_PAD x T_BLOCK accumulators)
WEIGHT_CODE = {"softplus": 0, "normalized": 1, "fixed": 2}
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- jit helpers
@register_device_function
@triton.jit
def _probs(z, g, cmask, SIGMOID: tl.constexpr):
    """Probabilities and per-voxel CE / BCE (summed over classes) of one (C_PAD, BLOCK) logit tile."""
    if SIGMOID:
        e = tl.exp(-tl.abs(z))
        inv = 1.0 / (1.0 + e)
        p = tl.where(z >= 0, inv, e * inv)
        bce = tl.maximum(z, 0.0) - z * g + tl.log(1.0 + e)
        p = tl.where(cmask, p, 0.0)
        ce = tl.sum(tl.where(cmask, bce, 0.0), axis=0)
    else:
        zm = tl.where(cmask, z, float("-inf"))
        mx = tl.max(zm, axis=0)
        e = tl.exp(zm - mx[None, :])
        ssum = tl.sum(e, axis=0)
        p = e / ssum[None, :]
        ce = mx + tl.log(ssum) - tl.sum(tl.where(g > 0, z, 0.0), axis=0)
    return p, ce


@register_device_function
@triton.jit
def _labels(y_ptr, b, S, v, vmask, cls, m2, C: tl.constexpr, SIGMOID: tl.constexpr):
    """(labels (BLOCK,), one-hot g (C_PAD, BLOCK) fp32). y: (B, S) integer labels; sigmoid with C == 1
    compares with label 1 (binary), otherwise with the class index."""
    LBL_OFF: tl.constexpr = 1 if (SIGMOID and C == 1) else 0
    y = tl.load(y_ptr + b * S + v, mask=vmask, other=0)  # the labels' own integer type: no wrap-around
    gf = (((cls[:, None] + LBL_OFF) == y[None, :]) & m2).to(tl.float32)
    return y, gf


@register_device_function
@triton.jit
def _dlogits(z, gf, m2, cmask, a_c, b_c, ce_scale, SIGMOID: tl.constexpr, SQUARED: tl.constexpr):
    """d loss / d z for one supervised map tile."""
    p, _ce = _probs(z, gf, cmask, SIGMOID)
    if SQUARED:
        dp = a_c[:, None] * gf + b_c[:, None] * (2.0 * p)
    else:
        dp = a_c[:, None] * gf + b_c[:, None]
    if SIGMOID:
        dz = dp * p * (1.0 - p) + ce_scale * (p - gf)
    else:
        dz = p * (dp - tl.sum(p * dp, axis=0)[None, :]) + ce_scale * (p - gf)
    return tl.where(m2, dz, 0.0)


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
def _mll_stats_kernel(maps, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, part_ptr,
                      S, tiles_per_prog, n_chunks,
                      M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                      T_BLOCK: tl.constexpr, BAD_PAD: tl.constexpr, SIGMOID: tl.constexpr, SQUARED: tl.constexpr,
                      OPS_MASK: tl.constexpr, BLOCK: tl.constexpr,
                      PART_W: tl.constexpr, PART_I: tl.constexpr, PART_P: tl.constexpr, PART_G: tl.constexpr,
                      PART_CE: tl.constexpr, PART_BAD: tl.constexpr):
    # maps: M x (B, C, S) logits; y: (B, S) integer labels; desc: (T, DESC_WIDTH) int32 rows (mixing.py);
    # cw/cb/aw/ab: fp32 mixing parameters (reference.py layout); part: (B * n_chunks, PART_W) fp32 rows
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t0 = tl.program_id(2) * T_BLOCK
    prog = b * n_chunks + pid_c
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    tcol = tl.arange(0, T_BLOCK)
    midx = tl.arange(0, BAD_PAD)
    N_LBL: tl.constexpr = 2 if (SIGMOID and C == 1) else C
    row = (b * C + cls[:, None]) * S  # (C_PAD, 1) int64
    acc_i = tl.zeros([C_PAD, T_BLOCK], tl.float32)
    acc_p = tl.zeros([C_PAD, T_BLOCK], tl.float32)
    acc_ce = tl.zeros([T_BLOCK], tl.float32)
    acc_g = tl.zeros([C_PAD], tl.float32)
    acc_bad = tl.zeros([BAD_PAD], tl.float32)
    for it in range(tiles_per_prog):
        v = (pid_c * tiles_per_prog + it) * BLOCK + tl.arange(0, BLOCK)
        vmask = v < S
        m2 = cmask & vmask[None, :]
        y, gf = _labels(y_ptr, b, S, v, vmask, cls, m2, C, SIGMOID)
        xs = load_maps(maps, row, v, m2, M)
        if t0 == 0:  # the first T group counts labels and bad inputs
            acc_bad += tl.where(midx == M, tl.sum((vmask & ((y < 0) | (y >= N_LBL))).to(tl.float32), axis=0), 0.0)
            acc_g += tl.sum(gf, axis=1)
            for i in tl.static_range(M):
                nbad = tl.sum(tl.sum(((xs[i] != xs[i]) | (tl.abs(xs[i]) == float("inf"))).to(tl.float32), axis=1),
                              axis=0)
                acc_bad += tl.where(midx == i, nbad, 0.0)
        for t in range(t0, tl.minimum(t0 + T_BLOCK, T)):
            z, _mx, _den = mix(desc_ptr + t * DESC_WIDTH, xs, maps, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls, b * C * S,
                               S, v, vmask, M, C, BLOCK, OPS_MASK)
            p, ce = _probs(z, gf, cmask, SIGMOID)
            p = tl.where(m2, p, 0.0)
            here = tcol[None, :] == t - t0
            acc_i += tl.where(here, tl.sum(p * gf, axis=1)[:, None], 0.0)
            if SQUARED:
                acc_p += tl.where(here, tl.sum(p * p, axis=1)[:, None], 0.0)
            else:
                acc_p += tl.where(here, tl.sum(p, axis=1)[:, None], 0.0)
            acc_ce += tl.where(tcol == t - t0, tl.sum(tl.where(vmask, ce, 0.0), axis=0), 0.0)
    base = part_ptr + prog * PART_W
    ct = cls[:, None] * T + t0 + tcol[None, :]
    ctm = cmask & (t0 + tcol[None, :] < T)
    tl.store(base + PART_I + ct, acc_i, mask=ctm)
    tl.store(base + PART_P + ct, acc_p, mask=ctm)
    tl.store(base + PART_CE + t0 + tcol, acc_ce, mask=t0 + tcol < T)
    if t0 == 0:
        tl.store(base + PART_G + cls, acc_g, mask=cls < C)
        tl.store(base + PART_BAD + midx, acc_bad, mask=midx <= M)


# ----------------------------------------------------------------------------- finalize
@triton.jit
def _mll_finalize_kernel(part_ptr, w_ptr, res_ptr, coef_ptr, B, n_chunks, n_ce,
                         ce_weight, dice_weight, smooth_nr, smooth_dr,
                         M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                         T_BLOCK: tl.constexpr, BAD_PAD: tl.constexpr, WEIGHT_MODE: tl.constexpr,
                         PER_SAMPLE: tl.constexpr, INCLUDE_BG: tl.constexpr,
                         PART_W: tl.constexpr, PART_I: tl.constexpr, PART_P: tl.constexpr, PART_G: tl.constexpr,
                         PART_CE: tl.constexpr, PART_BAD: tl.constexpr,
                         RES_PER_MAP: tl.constexpr, RES_CE: tl.constexpr, RES_DICE: tl.constexpr,
                         RES_DW: tl.constexpr, RES_CE_SCALE: tl.constexpr, RES_BAD: tl.constexpr):
    # part: (B * n_chunks, PART_W) fp32; w: (T,) raw weights; res: ResultVector; coef: (B or 1, 2, T, C) fp32
    cls = tl.arange(0, C_PAD)
    if INCLUDE_BG or C == 1:
        incl = cls < C
    else:
        incl = (cls < C) & (cls >= 1)
    inclf = incl.to(tl.float32)
    n_incl = tl.sum(inclf, axis=0)
    zero = tl.sum(tl.zeros([T_BLOCK], tl.float32), axis=0)  # an fp32 scalar
    zsum = zero + 1.0
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
                num = 2.0 * acc_i + smooth_nr
                den = acc_p + acc_g[:, None] + smooth_dr
                dice += tl.sum(tl.where(incl[:, None], 1.0 - num / den, 0.0), axis=0) / (n_incl * B)
                coef = inclf[:, None] / (n_incl * B) * (om * dice_weight)[None, :]
                cbase = coef_ptr + b * 2 * T * C
                tl.store(cbase + ctT, -coef * 2.0 / den, mask=ctm)
                tl.store(cbase + T * C + ctT, coef * num / (den * den), mask=ctm)
            else:
                tot_i += acc_i
                tot_p += acc_p
                tot_g += acc_g
        if not PER_SAMPLE:
            num = 2.0 * tot_i + smooth_nr
            den = tot_p + tot_g[:, None] + smooth_dr
            dice = tl.sum(tl.where(incl[:, None], 1.0 - num / den, 0.0), axis=0) / n_incl
            coef = inclf[:, None] / n_incl * (om * dice_weight)[None, :]
            tl.store(coef_ptr + ctT, -coef * 2.0 / den, mask=ctm)
            tl.store(coef_ptr + T * C + ctT, coef * num / (den * den), mask=ctm)
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
@triton.jit
def _mll_grad_kernel(maps, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, res_ptr, coef_ptr, gout_ptr,
                     grads, gw_ptr, pg_ptr,
                     S, tiles_per_prog, n_chunks,
                     M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                     T_BLOCK: tl.constexpr, SIGMOID: tl.constexpr, SQUARED: tl.constexpr, PER_SAMPLE: tl.constexpr,
                     CONCAT_GRAD: tl.constexpr, OPS_MASK: tl.constexpr, BLOCK: tl.constexpr,
                     RES_DW: tl.constexpr, RES_CE_SCALE: tl.constexpr,
                     PG_CB: tl.constexpr, PG_AW: tl.constexpr, PG_AB: tl.constexpr, PG_SIZE: tl.constexpr):
    # maps / grads: M x (B, C, S) logits and their gradients (logits dtype); res: ResultVector; coef: (B or 1,
    # 2, T, C); gout: (1,) upstream grad; gw: (T,) fp32; pg: (B * n_chunks, PG_SIZE) fp32 zeros, one
    # private row of parameter-gradient slots per program (ParamGradLayout)
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    prog = b * n_chunks + pid_c
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    gout = tl.load(gout_ptr).to(tl.float32)
    if (pid_c == 0) & (b == 0):
        for t0 in range(0, T, T_BLOCK):
            tcol = t0 + tl.arange(0, T_BLOCK)
            tl.store(gw_ptr + tcol, gout * tl.load(res_ptr + RES_DW + tcol, mask=tcol < T, other=0.0),
                     mask=tcol < T)
    if PER_SAMPLE:
        cbase = coef_ptr + b * 2 * T * C
    else:
        cbase = coef_ptr
    row = (b * C + cls[:, None]) * S
    pg_base = pg_ptr + prog * PG_SIZE
    for it in range(tiles_per_prog):
        v = (pid_c * tiles_per_prog + it) * BLOCK + tl.arange(0, BLOCK)
        vmask = v < S
        m2 = cmask & vmask[None, :]
        _y, gf = _labels(y_ptr, b, S, v, vmask, cls, m2, C, SIGMOID)
        xs = load_maps(maps, row, v, m2, M)
        gs = ()
        for i in tl.static_range(M):
            gs = gs + (tl.zeros([C_PAD, BLOCK], tl.float32),)
        for t in range(T):
            desc = desc_ptr + t * DESC_WIDTH
            z, mx, den = mix(desc, xs, maps, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls, b * C * S, S, v,
                             vmask, M, C, BLOCK, OPS_MASK)
            a_c = tl.load(cbase + t * C + cls, mask=cls < C, other=0.0) * gout
            b_c = tl.load(cbase + T * C + t * C + cls, mask=cls < C, other=0.0) * gout
            ce_scale = tl.load(res_ptr + RES_CE_SCALE + t) * gout
            dz = _dlogits(z, gf, m2, cmask, a_c, b_c, ce_scale, SIGMOID, SQUARED)
            gs = mix_grad(desc, dz, xs, gs, cw_ptr, aw_ptr, ab_ptr, mx, den, pg_base, cls,
                          M, C, BLOCK, OPS_MASK, CONCAT_GRAD, PG_CB, PG_AW, PG_AB)
        for i in tl.static_range(M):
            tl.store(grads[i] + row + v[None, :], gs[i].to(grads[i].dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------- launchers
def _sizes(maps, raw_weights):
    """(M, B, C, S, T, C_PAD, T_BLOCK) of a launch."""
    x0 = maps[0]
    B, C = x0.shape[:2]
    S = x0[0, 0].numel()
    T = raw_weights.numel()
    C_PAD = max(triton.next_power_of_2(C), 2)
    return len(maps), B, C, S, T, C_PAD, min(max(triton.next_power_of_2(T), 2), T_BLOCK_MAX)


def _grid(B: int, S: int, C_PAD: int, device):
    """(BLOCK, n_chunks, tiles_per_prog): a fixed budget of logits per tile; on a GPU ~4 programs per SM
    (split between the samples), in the interpreter one program per sample (it pays per operation, not
    per program; and the per-program traffic figure of ``segfuse bench`` is then the whole sample's)."""
    block = max(16, TILE_ELEMENTS // C_PAD)
    n_tiles = triton.cdiv(S, block)
    if gpu_launch_settings(device):
        n_chunks = max(1, min(n_tiles, triton.cdiv(4 * sm_count(device), B)))
    else:
        n_chunks = 1
    tiles_per_prog = triton.cdiv(n_tiles, n_chunks)
    return block, triton.cdiv(n_tiles, tiles_per_prog), tiles_per_prog


def _params(cw, cb, aw, ab, device):
    """The four mixing parameters; a 1-element placeholder (never read) for an operator not in use."""
    if all(t is not None for t in (cw, cb, aw, ab)):
        return [cw, cb, aw, ab]
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    return [dummy if t is None else t for t in (cw, cb, aw, ab)]


def mll_forward(maps, target, raw_weights, ops, cw, cb, aw, ab, *, weight_mode, ce_weight, dice_weight,
                sigmoid, squared, batch, include_background, smooth_nr, smooth_dr):
    """Pass 1 + finalize. ``maps``: M contiguous ``(B, C, *S)`` tensors of one shape and dtype; ``target``
    ``(B, *S)`` contiguous integer labels; parameters fp32 contiguous. Returns ``(res, coef)``:
    ``res`` a :class:`.layout.ResultVector`, ``coef`` ``(B or 1, 2, T, C)`` fp32."""
    M, B, C, S, T, C_PAD, T_BLOCK = _sizes(maps, raw_weights)
    dev = maps[0].device
    part_row, result = PartialRow(C, T, M), ResultVector(T, M)
    block, n_chunks, tpp = _grid(B, S, C_PAD, dev)
    bad_pad = triton.next_power_of_2(M + 1)
    part = torch.empty(B * n_chunks, part_row.width, dtype=torch.float32, device=dev)
    cw, cb, aw, ab = _params(cw, cb, aw, ab, dev)
    _mll_stats_kernel[(n_chunks, B, triton.cdiv(T, T_BLOCK))](
        maps=tuple(maps), y_ptr=target, desc_ptr=descriptors(M, ops, dev), cw_ptr=cw, cb_ptr=cb, aw_ptr=aw,
        ab_ptr=ab, part_ptr=part, S=S, tiles_per_prog=tpp, n_chunks=n_chunks,
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, BAD_PAD=bad_pad, SIGMOID=sigmoid, SQUARED=squared,
        OPS_MASK=ops_mask(ops), BLOCK=block, **part_row.constexprs(), num_warps=NUM_WARPS)
    res = torch.empty(result.size, dtype=torch.float32, device=dev)
    coef = torch.empty(1 if batch else B, 2, T, C, dtype=torch.float32, device=dev)
    _mll_finalize_kernel[(1,)](
        part_ptr=part, w_ptr=raw_weights, res_ptr=res, coef_ptr=coef, B=B, n_chunks=n_chunks,
        n_ce=float(B * S * (C if sigmoid else 1)), ce_weight=float(ce_weight), dice_weight=float(dice_weight),
        smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr),
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, BAD_PAD=bad_pad, WEIGHT_MODE=WEIGHT_CODE[weight_mode],
        PER_SAMPLE=not batch, INCLUDE_BG=include_background, **part_row.constexprs(), **result.constexprs(),
        num_warps=8)
    return res, coef


def mll_backward(grad_out, maps, target, raw_weights, ops, cw, cb, aw, ab, res, coef, *, sigmoid, squared,
                 batch, concat_grad):
    """Pass 2. Returns ``(grads: M tensors like maps, grad_raw_weights (T,) fp32, grad_params (PG_SIZE,) fp32)``."""
    M, B, C, S, T, C_PAD, T_BLOCK = _sizes(maps, raw_weights)
    dev = maps[0].device
    pg_layout = ParamGradLayout(M, C)
    block, n_chunks, tpp = _grid(B, S, C_PAD, dev)
    param_grad = ("concat" in ops and concat_grad) or "attention" in ops
    grads = tuple(torch.empty_like(x) for x in maps)
    gw = torch.empty(T, dtype=torch.float32, device=dev)
    pg = torch.zeros(B * n_chunks if param_grad else 1, pg_layout.size, dtype=torch.float32, device=dev)
    cw, cb, aw, ab = _params(cw, cb, aw, ab, dev)
    _mll_grad_kernel[(n_chunks, B)](
        maps=tuple(maps), y_ptr=target, desc_ptr=descriptors(M, ops, dev), cw_ptr=cw, cb_ptr=cb, aw_ptr=aw,
        ab_ptr=ab, res_ptr=res, coef_ptr=coef, gout_ptr=grad_out, grads=grads, gw_ptr=gw, pg_ptr=pg,
        S=S, tiles_per_prog=tpp, n_chunks=n_chunks,
        M=M, C=C, C_PAD=C_PAD, T=T, T_BLOCK=T_BLOCK, SIGMOID=sigmoid, SQUARED=squared, PER_SAMPLE=not batch,
        CONCAT_GRAD=concat_grad and "concat" in ops, OPS_MASK=ops_mask(ops), BLOCK=block,
        RES_DW=ResultVector(T, M).dw, RES_CE_SCALE=ResultVector(T, M).ce_scale, **pg_layout.constexprs(),
        num_warps=NUM_WARPS)
    return list(grads), gw, (pg.sum(0) if param_grad else pg[0])


register_kernel("mll_stats", _mll_stats_kernel)
register_kernel("mll_finalize", _mll_finalize_kernel)
register_kernel("mll_grad", _mll_grad_kernel)
