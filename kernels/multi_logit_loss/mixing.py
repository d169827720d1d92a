"""The LoMix mixing operators inside the kernels: one encoding, and each operator's forward and backward.

Encoding (the one used by the descriptors, the constexpr operator set and the kernels): code 0 is a
base map, operator ``OPS[k]`` has code ``k + 1``. A launch's operator set is the constexpr bit mask
``OPS_MASK = sum(1 << code)``, so the branches of operators not in use compile away.

Supervised map ``t`` is described by one descriptor row ``[code, member mask, subset index, first
concat row, first attention row, subset size]`` (bit ``i`` of the member mask <-> base map ``i``;
the member ``i`` of a subset uses concat / attention row ``first + its rank among the members``),
rows in the reference's map order.

Base-map tiles travel as tuples of ``(C_PAD, BLOCK)`` register tiles, one per map (any number of maps:
tuples are built, indexed and updated with constexpr indices inside ``tl.static_range`` loops). A map
coarser than the labels is read at its own resolution and upsampled in registers (:func:`load_upsampled`,
the rule of :mod:`.geometry`); ``SCALES`` (per map ``(sz, sy, sx)``) is a constexpr tuple.

Adding an operator: its eager semantics in :mod:`.reference` (name in ``OPS`` + a branch of
``mix_maps``), and here a code constant and a branch in :func:`mix` and :func:`mix_grad`.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..registry import register_device_function
from .reference import OPS, subsets

OP_CODE = {op: k + 1 for k, op in enumerate(OPS)}
OP_BASE: tl.constexpr = tl.constexpr(0)
OP_ADD: tl.constexpr = tl.constexpr(OP_CODE["add"])
OP_MUL: tl.constexpr = tl.constexpr(OP_CODE["mul"])
OP_CONCAT: tl.constexpr = tl.constexpr(OP_CODE["concat"])
OP_ATTENTION: tl.constexpr = tl.constexpr(OP_CODE["attention"])
OP_MEAN: tl.constexpr = tl.constexpr(OP_CODE["mean"])
DESC_WIDTH: tl.constexpr = tl.constexpr(6)  # [code, member mask, subset index, first concat row, first attention row, subset size]


def ops_mask(ops) -> int:
    """The constexpr operator set of a launch (base maps are always on)."""
    return (1 << 0) | sum(1 << OP_CODE[op] for op in ops)


@functools.lru_cache(maxsize=64)
def _descriptor_rows(M: int, ops: tuple) -> tuple:
    rows = [(0, 1 << i, 0, 0, 0, 1) for i in range(M)]
    for op in ops:
        rc = 0
        for si, sub in enumerate(subsets(M)):
            s = len(sub)
            rows.append((OP_CODE[op], sum(1 << i for i in sub), si, rc, s * (s - 1) // 2 - 1, s))
            rc += s
    return tuple(rows)


_DESC_CACHE: dict = {}


def descriptors(M: int, ops, device) -> torch.Tensor:
    """``(T, DESC_WIDTH)`` int32 descriptor rows in map order (cached per device)."""
    key = (M, tuple(ops), str(device))
    if key not in _DESC_CACHE:
        _DESC_CACHE[key] = torch.tensor(_descriptor_rows(M, tuple(ops)), dtype=torch.int32, device=device)
    return _DESC_CACHE[key]


# ----------------------------------------------------------------------------- small helpers
# (member bits, operator flags and tuple updates are written inline: in the interpreter every helper call
# costs more than the arithmetic it wraps)
@register_device_function
@triton.jit
def source_index(c, n, S: tl.constexpr, NEAREST: tl.constexpr):
    """``(i0, i1, lam)``: the two cells (of ``n``) that fine coordinate(s) ``c`` (int32) read along one axis of a
    map upsampled by the integer factor ``S``, and the weight of ``i1`` (fp32): ``F.interpolate(align_corners=
    False)``, source coordinate ``max((c + 0.5) / S - 0.5, 0)`` (``i0`` its exact integer floor, ``lam``
    computed in fp32 as PyTorch does), clamped at the last cell; nearest: ``c // S``. (geometry.py has the
    host copy of this rule.)"""
    lam = c.to(tl.float32) * 0.0
    if S == 1:
        i0 = c
        i1 = c
    elif NEAREST:
        i0 = c // S
        i1 = i0
    else:
        i0 = tl.maximum(2 * c + (1 - S), 0) // (2 * S)
        i1 = tl.minimum(i0 + 1, n - 1)
        src = tl.maximum((c.to(tl.float32) + 0.5) * (1.0 / S) - 0.5, 0.0)
        lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    return i0, i1, lam


@register_device_function
@triton.jit
def load_upsampled(ptr, rowoff, pz, py, px, m, D, H, W, SZ: tl.constexpr, SY: tl.constexpr, SX: tl.constexpr,
                   NEAREST: tl.constexpr):
    """fp32 values of one coarse map at fine voxels ``(pz, py, px)`` (``(BLOCK,)`` int32 each), interpolated in
    registers from its own grid ``(D / SZ, H / SY, W / SX)`` (bilinear / trilinear over the axes with a factor
    > 1, or nearest). ``rowoff``: element offset of the ``(b, c)`` plane(s), ``(C_PAD, 1)`` or a scalar;
    ``m``: validity of the result's shape. Corners are gathered from the coarse map (L1/L2 hits on a GPU)."""
    nz = D // SZ
    ny = H // SY
    nx = W // SX
    z0, z1, lz = source_index(pz, nz, SZ, NEAREST)
    y0, y1, ly = source_index(py, ny, SY, NEAREST)
    x0, x1, lx = source_index(px, nx, SX, NEAREST)
    base = ptr + rowoff
    o00 = (z0 * ny + y0) * nx
    val = tl.load(base + o00 + x0, mask=m, other=0.0).to(tl.float32)
    if SX > 1 and not NEAREST:
        val = val * (1.0 - lx) + tl.load(base + o00 + x1, mask=m, other=0.0).to(tl.float32) * lx
    if SY > 1 and not NEAREST:
        o01 = (z0 * ny + y1) * nx
        v1 = tl.load(base + o01 + x0, mask=m, other=0.0).to(tl.float32)
        if SX > 1:
            v1 = v1 * (1.0 - lx) + tl.load(base + o01 + x1, mask=m, other=0.0).to(tl.float32) * lx
        val = val * (1.0 - ly) + v1 * ly
    if SZ > 1 and not NEAREST:
        o10 = (z1 * ny + y0) * nx
        w0 = tl.load(base + o10 + x0, mask=m, other=0.0).to(tl.float32)
        if SX > 1:
            w0 = w0 * (1.0 - lx) + tl.load(base + o10 + x1, mask=m, other=0.0).to(tl.float32) * lx
        if SY > 1:
            o11 = (z1 * ny + y1) * nx
            w1 = tl.load(base + o11 + x0, mask=m, other=0.0).to(tl.float32)
            if SX > 1:
                w1 = w1 * (1.0 - lx) + tl.load(base + o11 + x1, mask=m, other=0.0).to(tl.float32) * lx
            w0 = w0 * (1.0 - ly) + w1 * ly
        val = val * (1.0 - lz) + w0 * lz
    return val


@register_device_function
@triton.jit
def load_maps(maps, b, cls, pz, py, px, v, m2, D, H, W, M: tl.constexpr, C: tl.constexpr, SCALES: tl.constexpr,
              NEAREST: tl.constexpr):
    """``(x_0 .. x_{M-1})``: each base map's ``(C_PAD, BLOCK)`` tile in fp32 at the fine voxels of the tile.

    maps: M pointers to ``(B, C, *S_i)`` logits (map ``i`` at ``S / SCALES[i]``); b: sample (int64); cls:
    ``(C_PAD,)`` class indices; pz, py, px: ``(BLOCK,)`` fine coordinates, v their flat index; m2:
    ``(C_PAD, BLOCK)`` validity. A map at the label size is loaded directly, a coarser one upsampled in
    registers (:func:`load_upsampled`)."""
    xs = ()
    for i in tl.static_range(M):
        if SCALES[i][0] * SCALES[i][1] * SCALES[i][2] == 1:
            xs = xs + (tl.load(maps[i] + (b * C + cls[:, None]) * (D * H * W) + v[None, :], mask=m2,
                               other=0.0).to(tl.float32),)
        else:
            s_i = (D // SCALES[i][0]) * (H // SCALES[i][1]) * (W // SCALES[i][2])
            xs = xs + (load_upsampled(maps[i], (b * C + cls[:, None]) * s_i, pz[None, :], py[None, :], px[None, :],
                                      m2, D, H, W, SCALES[i][0], SCALES[i][1], SCALES[i][2], NEAREST),)
    return xs


@register_device_function
@triton.jit
def _score(aw_ptr, ab_ptr, member, arow, x, cls, C: tl.constexpr):
    """Attention score ``(BLOCK,)`` of one member (conv row ``arow``: ``C -> 1``); -inf for a non-member."""
    a = tl.load(aw_ptr + arow * C + cls, mask=(cls < C) & ((cls * 0 + member.to(tl.int32)) != 0), other=0.0)
    sc = tl.sum(a[:, None] * x, axis=0) + tl.load(ab_ptr + arow)
    return tl.where(member, sc, float("-inf"))


# ----------------------------------------------------------------------------- forward
@register_device_function
@triton.jit
def mix(desc, xs, maps, cw_ptr, cb_ptr, aw_ptr, ab_ptr, cls, b, v, vmask, S,
        M: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr, OPS_MASK: tl.constexpr, SCALES: tl.constexpr):
    """Supervised map ``desc`` of one tile: ``(z, mx, den)``, z ``(C_PAD, BLOCK)`` fp32.

    base / add: sum of the members; mean: their average; mul: product; concat: 1x1 conv over the concatenated members
    (+ bias); attention: softmax over the members of a per-member score, weighted sum. ``mx`` / ``den``
    are the attention softmax max and normaliser (attention only; pass 2 reuses them).
    desc: pointer to this map's descriptor row; b, v, vmask, S: the tile's sample, its fine voxels (flat
    indices) and their validity, the voxels per sample; SCALES: the maps' factors (concat re-reads class
    rows of members at the label size from L1, and takes those of coarse members from their upsampled
    register tiles). Fields other than code and members are loaded where used (registers)."""
    op = tl.load(desc)
    msk = tl.load(desc + 1)
    x0 = xs[0]
    mx = tl.zeros([BLOCK], tl.float32)
    den = tl.full([BLOCK], 1.0, tl.float32)
    z = tl.zeros(x0.shape, tl.float32)
    if op <= OP_ADD:
        for i in tl.static_range(M):
            z += tl.where(((msk >> i) & 1) != 0, xs[i], 0.0)
    if ((tl.constexpr(OPS_MASK) >> OP_MEAN) & 1) != 0:
        if op == OP_MEAN:
            for i in tl.static_range(M):
                z += tl.where(((msk >> i) & 1) != 0, xs[i], 0.0)
            z = z / tl.load(desc + 5).to(tl.float32)
    if ((tl.constexpr(OPS_MASK) >> OP_MUL) & 1) != 0:
        if op == OP_MUL:
            z = tl.full(x0.shape, 1.0, tl.float32)
            for i in tl.static_range(M):
                z = z * tl.where(((msk >> i) & 1) != 0, xs[i], 1.0)
    if ((tl.constexpr(OPS_MASK) >> OP_CONCAT) & 1) != 0:
        if op == OP_CONCAT:
            # z[c] = sum_i sum_k W_i[c, k] x_i[k] + bias: FMA over class rows re-read from L1 (no tl.dot:
            # its operand layouts made pass 2 spill)
            row = tl.load(desc + 3)
            for i in tl.static_range(M):
                member = ((msk >> i) & 1) != 0
                wcol = cw_ptr + row * C * C + cls * C
                wm = (cls < C) & ((cls * 0 + member.to(tl.int32)) != 0)
                xm = vmask & ((v * 0 + member.to(tl.int32)) != 0)
                for k in tl.static_range(C):
                    wk = tl.load(wcol + k, mask=wm, other=0.0)
                    if SCALES[i][0] * SCALES[i][1] * SCALES[i][2] == 1:
                        xk = tl.load(maps[i] + (b * C + k) * S + v, mask=xm, other=0.0).to(tl.float32)
                    else:
                        # a coarse member's class row comes from its upsampled register tile (re-reading it
                        # would mean 2^d corner loads per row and, hoisted, a pointer per corner and row)
                        xk = tl.sum(tl.where(cls[:, None] == k, xs[i], 0.0), axis=0)
                    z += wk[:, None] * xk[None, :]
                row += member.to(tl.int32)
            z += tl.load(cb_ptr + tl.load(desc + 2) * C + cls, mask=cls < C, other=0.0)[:, None]
    if ((tl.constexpr(OPS_MASK) >> OP_ATTENTION) & 1) != 0:
        if op == OP_ATTENTION:
            # scores are recomputed in the second loop rather than kept: M live score vectors made pass 2 spill
            ar0 = tl.load(desc + 4)
            size = tl.load(desc + 5)
            mx = tl.full([BLOCK], float("-inf"), tl.float32)
            row = ar0
            for i in tl.static_range(M):
                member = ((msk >> i) & 1) != 0
                mx = tl.maximum(mx, _score(aw_ptr, ab_ptr, member, tl.minimum(row, ar0 + size - 1), xs[i], cls, C))
                row += member.to(tl.int32)
            den = tl.zeros([BLOCK], tl.float32)
            row = ar0
            for i in tl.static_range(M):
                member = ((msk >> i) & 1) != 0
                e = tl.exp(_score(aw_ptr, ab_ptr, member, tl.minimum(row, ar0 + size - 1), xs[i], cls, C) - mx)
                den += e
                z += e[None, :] * xs[i]
                row += member.to(tl.int32)
            z = z / den[None, :]
    return z, mx, den


# ----------------------------------------------------------------------------- backward
@register_device_function
@triton.jit
def mix_grad(desc, dz, xs, gs, cw_ptr, aw_ptr, ab_ptr, mx, den, pg_base, cls,
             M: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr, OPS_MASK: tl.constexpr,
             CONCAT_GRAD: tl.constexpr, PG_CB: tl.constexpr, PG_AW: tl.constexpr, PG_AB: tl.constexpr):
    """Add ``dz`` (d loss / d supervised map ``desc``, ``(C_PAD, BLOCK)``) back to the member tiles ``gs`` and
    the attention parameter gradients (with ``CONCAT_GRAD`` also the concat ones) to this program's private
    slots at ``pg_base`` (layout :class:`.layout.ParamGradLayout`). Returns the updated ``gs``."""
    op = tl.load(desc)
    msk = tl.load(desc + 1)
    if op <= OP_ADD:
        for i in tl.static_range(M):
            gs = gs[:i] + (gs[i] + tl.where(((msk >> i) & 1) != 0, dz, 0.0),) + gs[i + 1:]
    if ((tl.constexpr(OPS_MASK) >> OP_MEAN) & 1) != 0:
        if op == OP_MEAN:
            dzm = dz / tl.load(desc + 5).to(tl.float32)
            for i in tl.static_range(M):
                gs = gs[:i] + (gs[i] + tl.where(((msk >> i) & 1) != 0, dzm, 0.0),) + gs[i + 1:]
    if ((tl.constexpr(OPS_MASK) >> OP_MUL) & 1) != 0:
        if op == OP_MUL:
            for i in tl.static_range(M):
                d = dz
                for i2 in tl.static_range(M):
                    if i2 != i:
                        d = d * tl.where(((msk >> i2) & 1) != 0, xs[i2], 1.0)
                gs = gs[:i] + (gs[i] + tl.where(((msk >> i) & 1) != 0, d, 0.0),) + gs[i + 1:]
    if ((tl.constexpr(OPS_MASK) >> OP_CONCAT) & 1) != 0:
        if op == OP_CONCAT:
            # d x_i[k] = sum_c W_i[c, k] dz[c];  d W_i[c, k] = sum_v dz[c] x_i[k];  d bias[c] = sum_v dz[c]
            for c in tl.static_range(C):
                dzc = tl.sum(tl.where(cls[:, None] == c, dz, 0.0), axis=0)
                row = tl.load(desc + 3)
                for i in tl.static_range(M):
                    member = ((msk >> i) & 1) != 0
                    am = (cls < C) & ((cls * 0 + member.to(tl.int32)) != 0)
                    wrow = tl.load(cw_ptr + row * C * C + c * C + cls, mask=am, other=0.0)
                    gs = gs[:i] + (gs[i] + wrow[:, None] * dzc[None, :],) + gs[i + 1:]
                    if CONCAT_GRAD:
                        tl.atomic_add(pg_base + row * C * C + c * C + cls, tl.sum(xs[i] * dzc[None, :], axis=1),
                                      mask=am, sem="relaxed")
                    row += member.to(tl.int32)
            if CONCAT_GRAD:
                tl.atomic_add(pg_base + PG_CB + tl.load(desc + 2) * C + cls, tl.sum(dz, axis=1), mask=cls < C, sem="relaxed")
    if ((tl.constexpr(OPS_MASK) >> OP_ATTENTION) & 1) != 0:
        if op == OP_ATTENTION:
            # z = sum_i a_i x_i, a = softmax(score); d score_i = a_i (dz.x_i - sum_k a_k dz.x_k)
            # the member weights a_i are recomputed in the second loop rather than kept (registers)
            ar0 = tl.load(desc + 4)
            size = tl.load(desc + 5)
            sda = tl.zeros([BLOCK], tl.float32)
            row = ar0
            for i in tl.static_range(M):
                member = ((msk >> i) & 1) != 0
                a = tl.exp(_score(aw_ptr, ab_ptr, member, tl.minimum(row, ar0 + size - 1), xs[i], cls, C) - mx) / den
                sda += a * tl.sum(dz * xs[i], axis=0)
                row += member.to(tl.int32)
            row = ar0
            for i in tl.static_range(M):
                member = ((msk >> i) & 1) != 0
                arow = tl.minimum(row, ar0 + size - 1)
                a = tl.exp(_score(aw_ptr, ab_ptr, member, arow, xs[i], cls, C) - mx) / den
                dsc = a * (tl.sum(dz * xs[i], axis=0) - sda)
                am = (cls < C) & ((cls * 0 + member.to(tl.int32)) != 0)
                aw = tl.load(aw_ptr + arow * C + cls, mask=am, other=0.0)
                gs = gs[:i] + (gs[i] + a[None, :] * dz + aw[:, None] * dsc[None, :],) + gs[i + 1:]
                tl.atomic_add(pg_base + PG_AW + arow * C + cls, tl.sum(xs[i] * dsc[None, :], axis=1),
                              mask=am, sem="relaxed")
                tl.atomic_add(pg_base + PG_AB + arow, tl.where(member, tl.sum(dsc, axis=0), 0.0), sem="relaxed")
                row += member.to(tl.int32)
    return gs
