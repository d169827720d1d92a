"""Triton kernels and launchers of the fused multi-logit Dice + CE loss (LoMix mixing in-kernel).

Three kernels, two passes over the logits:

* ``_mll_stats_kernel`` (pass 1): grid ``(chunks, B)``; each program walks its voxel tiles, loads
  every base map's ``(C, BLOCK)`` tile once, builds every supervised map (base + mutants) in registers,
  takes one ``exp`` per logit for the softmax, and accumulates per-(map, class) Dice sums ``I``, ``P``,
  the label counts ``G``, the CE sum and the bad-input counters in registers. It writes one partial
  row per program (no atomics).
* ``_mll_finalize_kernel``: one program; sums the partial rows in a fixed order (deterministic),
  applies the weight transform (softplus / normalised / fixed), and writes the loss, the per-map
  losses, ``dL/d raw weight`` (before the upstream grad), and the per-(b?, map, class) coefficients
  pass 2 needs.
* ``_mll_grad_kernel`` (pass 2): same grid and tile walk; recomputes the supervised maps, writes
  ``dL/d base logits`` once, and accumulates the concat / attention parameter gradients into a slot
  region private to the program (each slot has one owner thread, so the sum order is fixed), which
  the launcher sums over programs with one ``torch.sum``.

Maps arrive as separate tensors: map ``i`` is addressed as ``x_ptr + off_i`` where ``off_i`` is its
element offset from map 0 (all maps share dtype, shape and device), so no stacking copy is made.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..registry import register_device_function, register_kernel
from .reference import OPS, attn_rows, concat_rows, subsets

MAX_MAPS = 5
_OP_CODE = {op: i + 1 for i, op in enumerate(OPS)}  # add 1, mul 2, concat 3, attention 4
_WEIGHT_CODE = {"softplus": 0, "normalized": 1, "fixed": 2}
BLOCK = 32  # voxels per tile on GPU: with 8 warps the LoMix build (4 maps x 16 padded classes) does not spill
NUM_WARPS = 8  # 4 warps spill in pass 2 (LoMix, 4 maps x 9 classes); 8 builds spill-free for sm_80 / sm_90a
BLOCK_INTERPRETER = 4096  # cap; the interpreter pays per op, not per element: few, wide tiles


# ----------------------------------------------------------------------------- jit helpers
@register_device_function
@triton.jit
def _pick(i: tl.constexpr, a0, a1, a2, a3, a4):
    if i == 0:
        r = a0
    elif i == 1:
        r = a1
    elif i == 2:
        r = a2
    elif i == 3:
        r = a3
    else:
        r = a4
    return r


@register_device_function
@triton.jit
def _add_at(i: tl.constexpr, d, a0, a1, a2, a3, a4):
    if i == 0:
        a0 = a0 + d
    elif i == 1:
        a1 = a1 + d
    elif i == 2:
        a2 = a2 + d
    elif i == 3:
        a3 = a3 + d
    else:
        a4 = a4 + d
    return a0, a1, a2, a3, a4


@register_device_function
@triton.jit
def _bit(msk, i: tl.constexpr):
    return ((msk >> i) & 1) != 0


@register_device_function
@triton.jit
def _bitv(msk, i: tl.constexpr, like):
    # the member bit broadcast to the shape of the int tensor ``like`` (masks must be built as vectors)
    return (like * 0 + ((msk >> i) & 1)) != 0


@register_device_function
@triton.jit
def _rank(msk, i: tl.constexpr):
    # position of map i among the members of msk (number of members below i)
    r = msk * 0
    for i2 in tl.static_range(i):
        r += (msk >> i2) & 1
    return r


@register_device_function
@triton.jit
def _load_x(x_ptr, off, row, v, m2):
    return tl.load(x_ptr + off + row + v[None, :], mask=m2, other=0.0).to(tl.float32)


@register_device_function
@triton.jit
def _score(aw_ptr, ab_ptr, msk, i: tl.constexpr, x, cls, C: tl.constexpr):
    # attention score of member i (-inf for non-members); conv row = s(s-1)/2 - 1 + rank
    s = _rank(msk, 8)
    arow = tl.minimum(s * (s - 1) // 2 - 1 + _rank(msk, i), s * (s + 1) // 2 - 2)  # in bounds for non-members
    a = tl.load(aw_ptr + arow * C + cls, mask=(cls < C) & _bitv(msk, i, cls), other=0.0)
    sc = tl.sum(a[:, None] * x, axis=0) + tl.load(ab_ptr + arow)
    return tl.where(_bit(msk, i), sc, float("-inf"))


@register_device_function
@triton.jit
def _mix(op, msk, si, rc0, x0, x1, x2, x3, x4, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls,
         x_ptr, off1, off2, off3, off4, b, S, v, vmask,
         M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr, OPS: tl.constexpr):
    """Supervised map ``op(S)`` for the member bit mask ``msk`` (bit i <-> base map i).

    op 0 (base map) and 1 (add): sum of members; 2: product; 3: concat + 1x1 conv; 4: attention.
    ``OPS`` (constexpr bits: 2 mul, 4 concat, 8 attention) compiles out the operators not in use.
    Returns ``(z, mx, den)``; mx / den are the attention softmax max and normaliser (op 4 only).
    """
    mx = tl.zeros([BLOCK], tl.float32)
    den = tl.full([BLOCK], 1.0, tl.float32)
    z = tl.zeros(x0.shape, tl.float32)
    if op <= 1:
        for i in tl.static_range(M):
            z += tl.where(_bit(msk, i), _pick(i, x0, x1, x2, x3, x4), 0.0)
    if (OPS & 2) != 0:
        if op == 2:
            z = tl.full(x0.shape, 1.0, tl.float32)
            for i in tl.static_range(M):
                z = z * tl.where(_bit(msk, i), _pick(i, x0, x1, x2, x3, x4), 1.0)
    if (OPS & 4) != 0:
        if op == 3:
            # z[c] = sum_i sum_k W_i[c, k] x_i[k] + bias: FMA over class rows re-read from L1 (no tl.dot:
            # its operand layouts made pass 2 spill)
            for i in tl.static_range(M):
                wcol = cw_ptr + (rc0 + _rank(msk, i)) * C * C + cls * C
                wm = (cls < C) & _bitv(msk, i, cls)
                xrow = x_ptr + _pick(i, 0, off1, off2, off3, off4) + b * C * S + v
                for k in tl.static_range(C):
                    wk = tl.load(wcol + k, mask=wm, other=0.0)
                    xk = tl.load(xrow + k * S, mask=vmask, other=0.0).to(tl.float32)
                    z += wk[:, None] * xk[None, :]
            z += tl.load(cb_ptr + si * C + cls, mask=cls < C, other=0.0)[:, None]
    if (OPS & 8) != 0:
        if op == 4:
            mx = tl.full([BLOCK], float("-inf"), tl.float32)
            for i in tl.static_range(M):
                mx = tl.maximum(mx, _score(aw_ptr, ab_ptr, msk, i, _pick(i, x0, x1, x2, x3, x4), cls, C))
            den = tl.zeros([BLOCK], tl.float32)
            for i in tl.static_range(M):
                x = _pick(i, x0, x1, x2, x3, x4)
                e = tl.exp(_score(aw_ptr, ab_ptr, msk, i, x, cls, C) - mx)
                den += e
                z += e[None, :] * x
            z = z / den[None, :]
    return z, mx, den


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


# ----------------------------------------------------------------------------- pass 1
@triton.jit
def _mll_stats_kernel(x_ptr, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, part_ptr,
                      off1, off2, off3, off4, S, tiles_per_prog, n_chunks,
                      M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                      T_PAD: tl.constexpr, SIGMOID: tl.constexpr, SQUARED: tl.constexpr,
                      OPS: tl.constexpr, BLOCK: tl.constexpr):
    # x: map m at x_ptr + off_m, (B, C, S); y: (B, S) integer labels; desc: (T, 4) int32
    # [op, member mask, subset index, first concat row]; part: (B*n_chunks, W) fp32
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    prog = b * n_chunks + pid_c
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    tcol = tl.arange(0, T_PAD)
    midx = tl.arange(0, 8)
    LBL_OFF: tl.constexpr = 1 if (SIGMOID and C == 1) else 0
    N_LBL: tl.constexpr = 2 if (SIGMOID and C == 1) else C
    row = (b * C + cls[:, None]) * S  # (C_PAD, 1) int64
    acc_i = tl.zeros([C_PAD, T_PAD], tl.float32)
    acc_p = tl.zeros([C_PAD, T_PAD], tl.float32)
    acc_ce = tl.zeros([T_PAD], tl.float32)
    acc_g = tl.zeros([C_PAD], tl.float32)
    acc_bad = tl.zeros([8], tl.float32)
    for it in range(tiles_per_prog):
        v = (pid_c * tiles_per_prog + it) * BLOCK + tl.arange(0, BLOCK)
        vmask = v < S
        m2 = cmask & vmask[None, :]
        y = tl.load(y_ptr + b * S + v, mask=vmask, other=0).to(tl.int32)
        acc_bad += tl.where(midx == M, tl.sum((vmask & ((y < 0) | (y >= N_LBL))).to(tl.float32), axis=0), 0.0)
        gf = (((cls[:, None] + LBL_OFF) == y[None, :]) & m2).to(tl.float32)
        acc_g += tl.sum(gf, axis=1)
        x0 = _load_x(x_ptr, 0, row, v, m2)
        x1 = x0
        x2 = x0
        x3 = x0
        x4 = x0
        if M > 1:
            x1 = _load_x(x_ptr, off1, row, v, m2)
        if M > 2:
            x2 = _load_x(x_ptr, off2, row, v, m2)
        if M > 3:
            x3 = _load_x(x_ptr, off3, row, v, m2)
        if M > 4:
            x4 = _load_x(x_ptr, off4, row, v, m2)
        for i in tl.static_range(M):
            xi = _pick(i, x0, x1, x2, x3, x4)
            nbad = tl.sum(tl.sum(((xi != xi) | (tl.abs(xi) == float("inf"))).to(tl.float32), axis=1), axis=0)
            acc_bad += tl.where(midx == i, nbad, 0.0)
        for t in range(T):
            op = tl.load(desc_ptr + 4 * t)
            msk = tl.load(desc_ptr + 4 * t + 1)
            si = tl.load(desc_ptr + 4 * t + 2)
            rc0 = tl.load(desc_ptr + 4 * t + 3)
            z, _mx, _den = _mix(op, msk, si, rc0, x0, x1, x2, x3, x4, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls,
                           x_ptr, off1, off2, off3, off4, b, S, v, vmask, M, C, C_PAD, BLOCK, OPS)
            p, ce = _probs(z, gf, cmask, SIGMOID)
            p = tl.where(m2, p, 0.0)
            acc_i += tl.where(tcol[None, :] == t, tl.sum(p * gf, axis=1)[:, None], 0.0)
            if SQUARED:
                acc_p += tl.where(tcol[None, :] == t, tl.sum(p * p, axis=1)[:, None], 0.0)
            else:
                acc_p += tl.where(tcol[None, :] == t, tl.sum(p, axis=1)[:, None], 0.0)
            acc_ce += tl.where(tcol == t, tl.sum(tl.where(vmask, ce, 0.0), axis=0), 0.0)
    W: tl.constexpr = 2 * C * T + C + T + M + 1
    base = part_ptr + prog * W
    ct = cls[:, None] * T + tcol[None, :]
    ctm = cmask & (tcol[None, :] < T)
    tl.store(base + ct, acc_i, mask=ctm)
    tl.store(base + C * T + ct, acc_p, mask=ctm)
    tl.store(base + 2 * C * T + cls, acc_g, mask=cls < C)
    tl.store(base + 2 * C * T + C + tcol, acc_ce, mask=tcol < T)
    tl.store(base + 2 * C * T + C + T + midx, acc_bad, mask=midx <= M)


# ----------------------------------------------------------------------------- finalize
@triton.jit
def _mll_finalize_kernel(part_ptr, w_ptr, res_ptr, coef_ptr, B, n_chunks, n_ce,
                         ce_weight, dice_weight, smooth_nr, smooth_dr,
                         M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                         T_PAD: tl.constexpr, WEIGHT_MODE: tl.constexpr, PER_SAMPLE: tl.constexpr,
                         INCLUDE_BG: tl.constexpr):
    # res: [loss, l_t (T), ce_t (T), dice_t (T), dL/dw_t before grad_out (T), ce_scale_t (T), bad (M+1)]
    # coef: (B if per-sample else 1, 2, T, C): Dice chain coefficients A (x g) and Bq (x dP/dp)
    cls = tl.arange(0, C_PAD)
    tcol = tl.arange(0, T_PAD)
    midx = tl.arange(0, 8)
    tm = tcol < T
    if INCLUDE_BG or C == 1:
        incl = cls < C
    else:
        incl = (cls < C) & (cls >= 1)
    inclf = incl.to(tl.float32)
    n_incl = tl.sum(inclf, axis=0)
    ct = cls[:, None] * T + tcol[None, :]
    ctm = (cls[:, None] < C) & tm[None, :]
    W: tl.constexpr = 2 * C * T + C + T + M + 1
    raw = tl.load(w_ptr + tcol, mask=tm, other=0.0).to(tl.float32)
    sp = tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
    sig = 1.0 / (1.0 + tl.exp(-raw))
    if WEIGHT_MODE == 0:
        om = sp
    elif WEIGHT_MODE == 1:
        zsum = tl.sum(tl.where(tm, sp, 0.0), axis=0)
        om = sp * (T * 0.6931471805599453 / zsum)
    else:
        om = raw
    om = tl.where(tm, om, 0.0)
    tot_i = tl.zeros([C_PAD, T_PAD], tl.float32)
    tot_p = tl.zeros([C_PAD, T_PAD], tl.float32)
    tot_g = tl.zeros([C_PAD], tl.float32)
    ce_sum = tl.zeros([T_PAD], tl.float32)
    bad = tl.zeros([8], tl.float32)
    dice = tl.zeros([T_PAD], tl.float32)
    for b in range(B):
        acc_i = tl.zeros([C_PAD, T_PAD], tl.float32)
        acc_p = tl.zeros([C_PAD, T_PAD], tl.float32)
        acc_g = tl.zeros([C_PAD], tl.float32)
        for ch in range(n_chunks):
            base = part_ptr + (b * n_chunks + ch) * W
            acc_i += tl.load(base + ct, mask=ctm, other=0.0)
            acc_p += tl.load(base + C * T + ct, mask=ctm, other=0.0)
            acc_g += tl.load(base + 2 * C * T + cls, mask=cls < C, other=0.0)
            ce_sum += tl.load(base + 2 * C * T + C + tcol, mask=tm, other=0.0)
            bad += tl.load(base + 2 * C * T + C + T + midx, mask=midx <= M, other=0.0)
        if PER_SAMPLE:
            num = 2.0 * acc_i + smooth_nr
            den = acc_p + acc_g[:, None] + smooth_dr
            d = tl.where(incl[:, None], 1.0 - num / den, 0.0)
            coef = inclf[:, None] / (n_incl * B)
            dice += tl.sum(d, axis=0) / (n_incl * B)
            cbase = coef_ptr + b * 2 * T * C
            ctT = tcol[None, :] * C + cls[:, None]
            tl.store(cbase + ctT, -coef * 2.0 / den * (om * dice_weight)[None, :], mask=ctm)
            tl.store(cbase + T * C + ctT, coef * num / (den * den) * (om * dice_weight)[None, :], mask=ctm)
        else:
            tot_i += acc_i
            tot_p += acc_p
            tot_g += acc_g
    if not PER_SAMPLE:
        num = 2.0 * tot_i + smooth_nr
        den = tot_p + tot_g[:, None] + smooth_dr
        d = tl.where(incl[:, None], 1.0 - num / den, 0.0)
        coef = inclf[:, None] / n_incl
        dice = tl.sum(d, axis=0) / n_incl
        ctT = tcol[None, :] * C + cls[:, None]
        tl.store(coef_ptr + ctT, -coef * 2.0 / den * (om * dice_weight)[None, :], mask=ctm)
        tl.store(coef_ptr + T * C + ctT, coef * num / (den * den) * (om * dice_weight)[None, :], mask=ctm)
    ce = ce_sum / n_ce
    per_map = tl.where(tm, ce_weight * ce + dice_weight * dice, 0.0)
    loss = tl.sum(om * per_map, axis=0)
    if WEIGHT_MODE == 0:
        dw = sig * per_map
    elif WEIGHT_MODE == 1:
        dw = sig * (T * 0.6931471805599453 / zsum) * (per_map - loss / (T * 0.6931471805599453))
    else:
        dw = per_map
    tl.store(res_ptr, loss)
    tl.store(res_ptr + 1 + tcol, per_map, mask=tm)
    tl.store(res_ptr + 1 + T + tcol, ce, mask=tm)
    tl.store(res_ptr + 1 + 2 * T + tcol, dice, mask=tm)
    tl.store(res_ptr + 1 + 3 * T + tcol, dw, mask=tm)
    tl.store(res_ptr + 1 + 4 * T + tcol, om * ce_weight / n_ce, mask=tm)
    tl.store(res_ptr + 1 + 5 * T + midx, bad, mask=midx <= M)


# ----------------------------------------------------------------------------- pass 2
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


@triton.jit
def _mll_grad_kernel(x_ptr, y_ptr, desc_ptr, cw_ptr, cb_ptr, aw_ptr, ab_ptr, res_ptr, coef_ptr, gout_ptr,
                     gx_ptr, gw_ptr, pp_ptr,
                     off1, off2, off3, off4, S, tiles_per_prog, n_chunks, B,
                     M: tl.constexpr, C: tl.constexpr, C_PAD: tl.constexpr, T: tl.constexpr,
                     T_PAD: tl.constexpr, SIGMOID: tl.constexpr, SQUARED: tl.constexpr, PER_SAMPLE: tl.constexpr,
                     CONCAT_GRAD: tl.constexpr, OFF_CB: tl.constexpr, OFF_AW: tl.constexpr, OFF_AB: tl.constexpr,
                     NP: tl.constexpr, OPS: tl.constexpr, BLOCK: tl.constexpr):
    # gx: (M, B, C, S) in the logits dtype; gw: (T,) fp32; pp: (B*n_chunks, NP) fp32 zeros, one row
    # per program (its private parameter-gradient slots)
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    prog = b * n_chunks + pid_c
    cls = tl.arange(0, C_PAD)
    cmask = cls[:, None] < C
    LBL_OFF: tl.constexpr = 1 if (SIGMOID and C == 1) else 0
    gout = tl.load(gout_ptr).to(tl.float32)
    if (pid_c == 0) & (b == 0):
        tcol = tl.arange(0, T_PAD)
        tl.store(gw_ptr + tcol, gout * tl.load(res_ptr + 1 + 3 * T + tcol, mask=tcol < T, other=0.0),
                 mask=tcol < T)
    if PER_SAMPLE:
        cbase = coef_ptr + b * 2 * T * C
    else:
        cbase = coef_ptr
    row = (b * C + cls[:, None]) * S
    pbase = pp_ptr + prog * NP
    gsz = (b * 0 + B * C) * S  # int64
    for it in range(tiles_per_prog):
        v = (pid_c * tiles_per_prog + it) * BLOCK + tl.arange(0, BLOCK)
        vmask = v < S
        m2 = cmask & vmask[None, :]
        y = tl.load(y_ptr + b * S + v, mask=vmask, other=0).to(tl.int32)
        gf = (((cls[:, None] + LBL_OFF) == y[None, :]) & m2).to(tl.float32)
        x0 = _load_x(x_ptr, 0, row, v, m2)
        x1 = x0
        x2 = x0
        x3 = x0
        x4 = x0
        if M > 1:
            x1 = _load_x(x_ptr, off1, row, v, m2)
        if M > 2:
            x2 = _load_x(x_ptr, off2, row, v, m2)
        if M > 3:
            x3 = _load_x(x_ptr, off3, row, v, m2)
        if M > 4:
            x4 = _load_x(x_ptr, off4, row, v, m2)
        g0 = tl.zeros([C_PAD, BLOCK], tl.float32)
        g1 = g0
        g2 = g0
        g3 = g0
        g4 = g0
        for t in range(T):
            op = tl.load(desc_ptr + 4 * t)
            msk = tl.load(desc_ptr + 4 * t + 1)
            si = tl.load(desc_ptr + 4 * t + 2)
            rc0 = tl.load(desc_ptr + 4 * t + 3)
            z, mx, den = _mix(op, msk, si, rc0, x0, x1, x2, x3, x4, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls,
                           x_ptr, off1, off2, off3, off4, b, S, v, vmask, M, C, C_PAD, BLOCK, OPS)
            a_c = tl.load(cbase + t * C + cls, mask=cls < C, other=0.0) * gout
            b_c = tl.load(cbase + T * C + t * C + cls, mask=cls < C, other=0.0) * gout
            ce_scale = tl.load(res_ptr + 1 + 4 * T + t) * gout
            dz = _dlogits(z, gf, m2, cmask, a_c, b_c, ce_scale, SIGMOID, SQUARED)
            if op <= 1:
                for i in tl.static_range(M):
                    g0, g1, g2, g3, g4 = _add_at(i, tl.where(_bit(msk, i), dz, 0.0), g0, g1, g2, g3, g4)
            if (OPS & 2) != 0:
                if op == 2:
                    for i in tl.static_range(M):
                        d = dz
                        for i2 in tl.static_range(M):
                            if i2 != i:
                                d = d * tl.where(_bit(msk, i2), _pick(i2, x0, x1, x2, x3, x4), 1.0)
                        g0, g1, g2, g3, g4 = _add_at(i, tl.where(_bit(msk, i), d, 0.0), g0, g1, g2, g3, g4)
            if (OPS & 4) != 0:
                if op == 3:
                    # d x_i[k] = sum_c W_i[c, k] dz[c];  d W_i[c, k] = sum_v dz[c] x_i[k]
                    for c in tl.static_range(C):
                        dzc = tl.sum(tl.where(cls[:, None] == c, dz, 0.0), axis=0)
                        for i in tl.static_range(M):
                            r = rc0 + _rank(msk, i)
                            am = (cls < C) & _bitv(msk, i, cls)
                            wrow = tl.load(cw_ptr + r * C * C + c * C + cls, mask=am, other=0.0)
                            g0, g1, g2, g3, g4 = _add_at(i, wrow[:, None] * dzc[None, :], g0, g1, g2, g3, g4)
                            if CONCAT_GRAD:
                                x = _pick(i, x0, x1, x2, x3, x4)
                                tl.atomic_add(pbase + r * C * C + c * C + cls, tl.sum(x * dzc[None, :], axis=1),
                                              mask=am, sem="relaxed")
                    if CONCAT_GRAD:
                        tl.atomic_add(pbase + OFF_CB + si * C + cls, tl.sum(dz, axis=1), mask=cls < C,
                                      sem="relaxed")
            if (OPS & 8) != 0:
                if op == 4:
                    # z = sum_i a_i x_i, a = softmax(score); d score_i = a_i (dz.x_i - sum_k a_k dz.x_k)
                    sda = tl.zeros([BLOCK], tl.float32)
                    for i in tl.static_range(M):
                        x = _pick(i, x0, x1, x2, x3, x4)
                        a = tl.exp(_score(aw_ptr, ab_ptr, msk, i, x, cls, C) - mx) / den
                        sda += a * tl.sum(dz * x, axis=0)
                    s = _rank(msk, 8)
                    for i in tl.static_range(M):
                        x = _pick(i, x0, x1, x2, x3, x4)
                        a = tl.exp(_score(aw_ptr, ab_ptr, msk, i, x, cls, C) - mx) / den
                        dsc = a * (tl.sum(dz * x, axis=0) - sda)
                        arow = tl.minimum(s * (s - 1) // 2 - 1 + _rank(msk, i), s * (s + 1) // 2 - 2)
                        am = (cls < C) & _bitv(msk, i, cls)
                        aw = tl.load(aw_ptr + arow * C + cls, mask=am, other=0.0)
                        d = a[None, :] * dz + aw[:, None] * dsc[None, :]
                        g0, g1, g2, g3, g4 = _add_at(i, d, g0, g1, g2, g3, g4)
                        tl.atomic_add(pbase + OFF_AW + arow * C + cls, tl.sum(x * dsc[None, :], axis=1), mask=am,
                                      sem="relaxed")
                        tl.atomic_add(pbase + OFF_AB + arow, tl.where(_bit(msk, i), tl.sum(dsc, axis=0), 0.0),
                                      sem="relaxed")
        gdt = gx_ptr.dtype.element_ty
        tl.store(gx_ptr + row + v[None, :], g0.to(gdt), mask=m2)
        if M > 1:
            tl.store(gx_ptr + gsz + row + v[None, :], g1.to(gdt), mask=m2)
        if M > 2:
            tl.store(gx_ptr + 2 * gsz + row + v[None, :], g2.to(gdt), mask=m2)
        if M > 3:
            tl.store(gx_ptr + 3 * gsz + row + v[None, :], g3.to(gdt), mask=m2)
        if M > 4:
            tl.store(gx_ptr + 4 * gsz + row + v[None, :], g4.to(gdt), mask=m2)


# ----------------------------------------------------------------------------- launchers
_DESC_CACHE: dict = {}


def _ops_bits(ops) -> int:
    """constexpr operator set: 2 mul, 4 concat, 8 attention (add needs no code of its own)."""
    return sum({"add": 1, "mul": 2, "concat": 4, "attention": 8}[op] for op in ops)


def _descriptors(M: int, ops, device) -> torch.Tensor:
    """``(T, 4)`` int32 rows ``[op, member mask, subset index, first concat row]`` in map order (cached)."""
    key = (M, tuple(ops), str(device))
    if key not in _DESC_CACHE:
        rows = [[0, 1 << i, 0, 0] for i in range(M)]
        for op in ops:
            rc = 0
            for si, sub in enumerate(subsets(M)):
                rows.append([_OP_CODE[op], sum(1 << i for i in sub), si, rc])
                rc += len(sub)
        _DESC_CACHE[key] = torch.tensor(rows, dtype=torch.int32, device=device)
    return _DESC_CACHE[key]


def _cpad(C: int, ops) -> int:
    return max(triton.next_power_of_2(C), 2)


def _block(device: torch.device, S: int) -> int:
    if device.type == "cuda":
        return BLOCK
    return min(BLOCK_INTERPRETER, max(16, triton.next_power_of_2(S)))


def _grid(B: int, S: int, device: torch.device):
    n_tiles = triton.cdiv(S, _block(device, S))
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        n_chunks = max(1, min(n_tiles, triton.cdiv(4 * sms, B)))
    else:
        n_chunks = min(n_tiles, 2)  # interpreter: few programs, long loops
    tiles_per_prog = triton.cdiv(n_tiles, n_chunks)
    n_chunks = triton.cdiv(n_tiles, tiles_per_prog)
    return n_chunks, tiles_per_prog


def _offsets(maps):
    x0 = maps[0]
    es = x0.element_size()
    offs = []
    for m in maps[1:]:
        delta = m.data_ptr() - x0.data_ptr()
        if delta % es:
            raise ValueError("logit maps must be element-aligned to each other")
        offs.append(delta // es)
    return offs + [0] * (MAX_MAPS - 1 - len(offs))


def _param_layout(M: int, C: int):
    n_sub = len(subsets(M))
    off_cb = concat_rows(M) * C * C
    off_aw = off_cb + n_sub * C
    off_ab = off_aw + attn_rows(M) * C
    return off_cb, off_aw, off_ab, off_ab + attn_rows(M)


def _dummy(device):
    return torch.zeros(1, dtype=torch.float32, device=device)


def mll_forward(maps, target, raw_weights, ops, cw, cb, aw, ab, *, weight_mode, ce_weight, dice_weight,
                sigmoid, squared, batch, include_background, smooth_nr, smooth_dr):
    """Pass 1 + finalize. ``maps``: M contiguous ``(B, C, *S)`` tensors (same shape/dtype), ``target``
    ``(B, *S)`` integer. Returns ``(res, coef)`` (layouts in ``_mll_finalize_kernel``)."""
    x0 = maps[0]
    M = len(maps)
    B, C = x0.shape[:2]
    S = x0[0, 0].numel()
    T = raw_weights.numel()
    dev = x0.device
    C_PAD = _cpad(C, ops)
    T_PAD = max(triton.next_power_of_2(T), 2)
    n_chunks, tpp = _grid(B, S, dev)
    W = 2 * C * T + C + T + M + 1
    part = torch.empty(B * n_chunks, W, dtype=torch.float32, device=dev)
    d = _dummy(dev) if cw is None or aw is None else None
    offs = _offsets(maps)
    _mll_stats_kernel[(n_chunks, B)](
        x0, target, _descriptors(M, ops, dev), cw if cw is not None else d, cb if cb is not None else d,
        aw if aw is not None else d, ab if ab is not None else d, part,
        offs[0], offs[1], offs[2], offs[3], S, tpp, n_chunks,
        M=M, C=C, C_PAD=C_PAD, T=T, T_PAD=T_PAD, SIGMOID=sigmoid, SQUARED=squared, OPS=_ops_bits(ops),
        BLOCK=_block(dev, S), num_warps=NUM_WARPS)
    res = torch.empty(1 + 5 * T + M + 1, dtype=torch.float32, device=dev)
    coef = torch.empty(B if not batch else 1, 2, T, C, dtype=torch.float32, device=dev)
    n_ce = float(B * S * (C if sigmoid else 1))
    _mll_finalize_kernel[(1,)](
        part, raw_weights, res, coef, B, n_chunks, n_ce, float(ce_weight), float(dice_weight),
        float(smooth_nr), float(smooth_dr), M=M, C=C, C_PAD=max(triton.next_power_of_2(C), 2), T=T, T_PAD=T_PAD,
        WEIGHT_MODE=_WEIGHT_CODE[weight_mode], PER_SAMPLE=not batch, INCLUDE_BG=include_background,
        num_warps=4)
    return res, coef


def mll_backward(grad_out, maps, target, raw_weights, ops, cw, cb, aw, ab, res, coef, *, sigmoid, squared,
                 batch, concat_grad):
    """Pass 2. Returns ``(grad_maps (M, B, C, *S), grad_raw_weights (T,), grad_params flat (NP,))``."""
    x0 = maps[0]
    M = len(maps)
    B, C = x0.shape[:2]
    S = x0[0, 0].numel()
    T = raw_weights.numel()
    dev = x0.device
    C_PAD = _cpad(C, ops)
    T_PAD = max(triton.next_power_of_2(T), 2)
    n_chunks, tpp = _grid(B, S, dev)
    off_cb, off_aw, off_ab, NP = _param_layout(M, C)
    param_grad = ("concat" in ops and concat_grad) or "attention" in ops
    gx = torch.empty((M,) + tuple(x0.shape), dtype=x0.dtype, device=dev)
    gw = torch.empty(T, dtype=torch.float32, device=dev)
    pp = torch.zeros(B * n_chunks if param_grad else 1, NP if param_grad else 1, dtype=torch.float32, device=dev)
    d = _dummy(dev) if cw is None or aw is None else None
    offs = _offsets(maps)
    _mll_grad_kernel[(n_chunks, B)](
        x0, target, _descriptors(M, ops, dev), cw if cw is not None else d, cb if cb is not None else d,
        aw if aw is not None else d, ab if ab is not None else d, res, coef, grad_out, gx, gw, pp,
        offs[0], offs[1], offs[2], offs[3], S, tpp, n_chunks, B,
        M=M, C=C, C_PAD=C_PAD, T=T, T_PAD=T_PAD, SIGMOID=sigmoid, SQUARED=squared, PER_SAMPLE=not batch,
        CONCAT_GRAD=concat_grad and "concat" in ops, OFF_CB=off_cb, OFF_AW=off_aw, OFF_AB=off_ab, NP=NP,
        OPS=_ops_bits(ops), BLOCK=_block(dev, S), num_warps=NUM_WARPS)
    gp = pp.sum(0) if param_grad else torch.zeros(NP, dtype=torch.float32, device=dev)
    return gx, gw, gp


# ----------------------------------------------------------------------------- compile registry
def _lomix_specs(dtype: str):
    """One LoMix spec (4 maps, 9 classes, all four operators) and a 2-map binary sigmoid spec."""
    out = []
    for M, C, ops, sig in ((4, 9, OPS, False), (2, 1, ("add", "mul"), True)):
        T = M + len(ops) * len(subsets(M))
        out.append((M, C, ops, sig, T))
    return out


def _stats_specs(dtype: str):
    specs = []
    for M, C, ops, sig, T in _lomix_specs(dtype):
        sig_args = {"x_ptr": f"*{dtype}", "y_ptr": "*i64", "desc_ptr": "*i32", "cw_ptr": "*fp32", "cb_ptr": "*fp32",
                    "aw_ptr": "*fp32", "ab_ptr": "*fp32", "part_ptr": "*fp32", "off1": "i64", "off2": "i64",
                    "off3": "i64", "off4": "i64", "S": "i32", "tiles_per_prog": "i32", "n_chunks": "i32"}
        specs.append({"signature": sig_args,
                      "constexprs": {"M": M, "C": C, "C_PAD": _cpad(C, ops), "T": T,
                                     "T_PAD": max(triton.next_power_of_2(T), 2), "SIGMOID": sig,
                                     "SQUARED": not sig, "OPS": _ops_bits(ops), "BLOCK": BLOCK},
                      "num_warps": NUM_WARPS, "label": f"M{M}-C{C}-{'+'.join(ops) or 'none'}"})
    return specs


def _finalize_specs(dtype: str):
    specs = []
    for M, C, ops, sig, T in _lomix_specs(dtype):
        specs.append({"signature": {"part_ptr": "*fp32", "w_ptr": "*fp32", "res_ptr": "*fp32", "coef_ptr": "*fp32",
                                    "B": "i32", "n_chunks": "i32", "n_ce": "fp32", "ce_weight": "fp32",
                                    "dice_weight": "fp32", "smooth_nr": "fp32", "smooth_dr": "fp32"},
                      "constexprs": {"M": M, "C": C, "C_PAD": max(triton.next_power_of_2(C), 2), "T": T,
                                     "T_PAD": max(triton.next_power_of_2(T), 2), "WEIGHT_MODE": 0,
                                     "PER_SAMPLE": sig, "INCLUDE_BG": True},
                      "num_warps": 4})
    return specs


def _grad_specs(dtype: str):
    specs = []
    for M, C, ops, sig, T in _lomix_specs(dtype):
        off_cb, off_aw, off_ab, NP = _param_layout(M, C)
        sig_args = {"x_ptr": f"*{dtype}", "y_ptr": "*i64", "desc_ptr": "*i32", "cw_ptr": "*fp32", "cb_ptr": "*fp32",
                    "aw_ptr": "*fp32", "ab_ptr": "*fp32", "res_ptr": "*fp32", "coef_ptr": "*fp32",
                    "gout_ptr": "*fp32", "gx_ptr": f"*{dtype}", "gw_ptr": "*fp32", "pp_ptr": "*fp32",
                    "off1": "i64", "off2": "i64", "off3": "i64", "off4": "i64", "S": "i32",
                    "tiles_per_prog": "i32", "n_chunks": "i32", "B": "i32"}
        has_p = bool(ops)
        specs.append({"signature": sig_args,
                      "constexprs": {"M": M, "C": C, "C_PAD": _cpad(C, ops), "T": T,
                                     "T_PAD": max(triton.next_power_of_2(T), 2), "SIGMOID": sig,
                                     "SQUARED": not sig, "PER_SAMPLE": sig, "CONCAT_GRAD": has_p,
                                     "OFF_CB": off_cb, "OFF_AW": off_aw, "OFF_AB": off_ab, "NP": NP,
                                     "OPS": _ops_bits(ops), "BLOCK": BLOCK},
                      "num_warps": NUM_WARPS, "label": f"M{M}-C{C}-{'+'.join(ops) or 'none'}"})
    return specs


register_kernel("mll_stats", _mll_stats_kernel, _stats_specs)
register_kernel("mll_finalize", _mll_finalize_kernel, _finalize_specs, dtypes=("fp32",))
register_kernel("mll_grad", _mll_grad_kernel, _grad_specs)
