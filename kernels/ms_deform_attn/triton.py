"""Triton kernels and launchers of multi-scale deformable attention, 2D (bilinear) and 3D (trilinear).

Sampling is ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` at
``grid = 2 * loc - 1``: pixel coordinate ``ix = ((grid + 1) * size - 1) / 2`` per axis, the 4 (2D) or 8
(3D) surrounding corners, out-of-range corners contribute zero (their loads are masked off, so every
masked-in address lies inside ``value``). A sample whose coordinate is ``<= -1`` or ``>= size`` on
any axis (or not finite) is skipped entirely.

Kernels (grid ``(query blocks, heads, batch)`` for the first two):

* ``_msda_fwd_kernel``: one program per (batch, block of ``BLOCK_Q`` queries, head), all ``Dh``
  channels of the head vectorised in a ``(BLOCK_Q, BLOCK_D)`` tile; for each level / point it loads
  the location and weight once per query, computes the corner indices and weights in fp32, gathers
  the corner rows (``Dh`` contiguous elements each) and accumulates in fp32; the output tile is
  written once, in the value's dtype. Nothing intermediate is written: one launch.
* ``_msda_bwd_kernel``: the same tiling; reads the ``grad_out`` tile once, re-gathers the corners,
  and reduces ``grad_attention_weights`` (``<grad_out, sample>``) and ``grad_sampling_locations``
  (corner-weight derivatives times ``<grad_out, corner>``) over the head dim in registers: each
  program writes its own entries, no atomics. ``grad_value``:

  - default: fp32 ``tl.atomic_add`` of ``attn * corner weight * grad_out`` into an fp32
    ``(N, S, M, Dh)`` buffer (zero-filled), cast once to the value dtype at the end (for fp16/bf16;
    an fp32 value gets the buffer itself). Run-to-run bits may differ (float atomics).
  - ``deterministic=True``: the kernel writes, per sample corner, the value row it hits (key
    ``(n * S + token) * M + m``; invalid corners get the sentinel ``N * S * M``) and its coefficient
    ``attn * corner weight`` (fp32). A stable ``torch.sort`` of the keys and a ``torch.searchsorted``
    give each value row its contiguous segment of contributions in a fixed order, and
    ``_msda_gather_kernel`` (one program per ``ROWS_PER_PROG`` rows) sums ``coef * grad_out[q]`` over
    the segment in fp32 (chunks of ``BLOCK_E`` entries, one fixed-order tree sum at the end) and
    writes each grad_value row once, in the value dtype. Bitwise reproducible. Cost (E = N Q M L P
    2^d sample corners): keys + coefficients written once (8 B per corner with int32 keys), the sort
    (a few passes over keys + an int64 permutation), the searchsorted over N S M + 1 rows, and the
    gather re-reads ``grad_out`` rows (Dh elements) once per corner, mostly from cache; memory
    ~20-24 B per corner (about 400 MB at the Deformable-DETR encoder size) instead of the
    4 B per value element of the atomic buffer.

Fused softmax (``SOFTMAX``, ``ms_deform_attn(..., softmax=True)``): the weights are logits; both kernels
first take each query's online max and 1 / sum(exp) over its ``L * P`` logits (one extra read of the
logits, no write), and use ``exp(z - max) / sum`` as the weight. The backward stores the weight
gradients in an fp32 ``(N, Q, M, L, P)`` scratch while accumulating ``sum(a * grad_a)`` in registers,
then (after a program barrier) a second short pass writes the logit gradients
``a * (grad_a - sum)``: the separate softmax forward and backward passes (and the weights tensor) are
saved.

Offsets into ``value``, ``grad_out``, the outputs and the per-corner buffers are 64-bit. Level
geometry reaches the kernels as a small int32 ``(L, 4)`` tensor ``(W, H, Dz, start)`` built from
Python ints (cached per shapes and device), so level shapes are runtime values: no recompilation per
image size.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..dispatch import gpu_launch_settings
from ..registry import register_device_function, register_kernel

GPU_TILE_ELEMENTS = 1024  # BLOCK_Q * BLOCK_D per program on a GPU (8 fp32 accumulators per thread at 4 warps)
GPU_NUM_WARPS = 4
WIDE_HEAD_NUM_WARPS = 8  # BLOCK_D >= 128: 8 warps, 4 elements per thread
# register budgets: without one ptxas squeezed the D=8 fp32 backward to 56 registers and spilled on sm_80;
# wide heads (BLOCK_D >= 128: 8 unrolled 3D corners x 64-bit addresses per element) need the full 255
BWD_MAXNREG = 128
WIDE_HEAD_MAXNREG = 255
INTERP_TILE_ELEMENTS = 8192  # the interpreter: few, large programs
GATHER_TILE_ELEMENTS = 2048  # gather kernel: BLOCK_E * BLOCK_D, BLOCK_E in [8, 32] on a GPU, [8, 64] in the interpreter
GATHER_BLOCK_E_INTERP = 64
GATHER_ROWS_PER_PROG = {True: 1, False: 16}


# ----------------------------------------------------------------------------- jit helpers
@register_device_function
@triton.jit
def _axis(loc, size):
    """grid_sample's unnormalisation (align_corners=False) of one axis: ``(i0, frac, inside)``.

    ``inside`` is False where the sample contributes nothing on this axis (``ix <= -1``, ``ix >= size``,
    not finite); there the clamped coordinate only keeps the integer conversion defined."""
    sz = size.to(tl.float32)
    g = loc * 2.0 - 1.0
    ix = ((g + 1.0) * sz - 1.0) * 0.5
    inside = (ix > -1.0) & (ix < sz)
    ixc = tl.where(inside, ix, -1.0)
    i0f = tl.floor(ixc)
    return i0f.to(tl.int32), ixc - i0f, inside


@register_device_function
@triton.jit
def _corner(x0, y0, z0, fx, fy, fz, Wl, Hl, Zl, ok, CORNER: tl.constexpr, IS_3D: tl.constexpr):
    """Corner ``CORNER`` (bit 0: x + 1, bit 1: y + 1, bit 2: z + 1) of a sample block:
    ``(token index within the level, in-range mask, weight, d weight / d ix, d w / d iy, d w / d iz)``."""
    if CORNER & 1:
        xi = x0 + 1
        wx = fx
        sx = 1.0
    else:
        xi = x0
        wx = 1.0 - fx
        sx = -1.0
    if (CORNER >> 1) & 1:
        yi = y0 + 1
        wy = fy
        sy = 1.0
    else:
        yi = y0
        wy = 1.0 - fy
        sy = -1.0
    m = ok & (xi >= 0) & (xi < Wl) & (yi >= 0) & (yi < Hl)
    if IS_3D:
        if (CORNER >> 2) & 1:
            zi = z0 + 1
            wz = fz
            sz = 1.0
        else:
            zi = z0
            wz = 1.0 - fz
            sz = -1.0
        m = m & (zi >= 0) & (zi < Zl)
        token = (zi * Hl + yi) * Wl + xi
        return token, m, wx * wy * wz, sx * wy * wz, sy * wx * wz, sz * wx * wy
    else:
        token = yi * Wl + xi
        return token, m, wx * wy, sx * wy, sy * wx, wx * 0.0


@register_device_function
@triton.jit
def _sample_coords(loc_ptr, s_idx, q_ok, Wl, Hl, Zl, NDIM: tl.constexpr):
    """Load one (x, y[, z]) location per query (fp32) and unnormalise it per axis."""
    lx = tl.load(loc_ptr + s_idx * NDIM, mask=q_ok, other=0.0).to(tl.float32)
    ly = tl.load(loc_ptr + s_idx * NDIM + 1, mask=q_ok, other=0.0).to(tl.float32)
    x0, fx, okx = _axis(lx, Wl)
    y0, fy, oky = _axis(ly, Hl)
    ok = q_ok & okx & oky
    if NDIM == 3:
        lz = tl.load(loc_ptr + s_idx * NDIM + 2, mask=q_ok, other=0.0).to(tl.float32)
        z0, fz, okz = _axis(lz, Zl)
        ok = ok & okz
    else:
        z0 = x0 * 0
        fz = fx * 0.0
    return x0, y0, z0, fx, fy, fz, ok


@register_device_function
@triton.jit
def _softmax_stats(attn_ptr, nqm, q_ok, L, P):
    """Online max and 1 / sum(exp) of each query's L * P attention logits (fp32): ``(mx, inv)``."""
    mx = tl.full(nqm.shape, float("-inf"), tl.float32)
    den = tl.zeros(nqm.shape, tl.float32)
    for j in range(L * P):
        z = tl.load(attn_ptr + nqm * (L * P) + j, mask=q_ok, other=0.0).to(tl.float32)
        new = tl.maximum(mx, z)
        den = den * tl.exp(mx - new) + tl.exp(z - new)
        mx = new
    return mx, 1.0 / den


@register_device_function
@triton.jit
def _weight(attn_ptr, s_idx, q_ok, mx, inv, SOFTMAX: tl.constexpr):
    """One attention weight per query: the input as is, or (SOFTMAX) the softmax of the logit."""
    a = tl.load(attn_ptr + s_idx, mask=q_ok, other=0.0).to(tl.float32)
    if SOFTMAX:
        a = tl.exp(a - mx) * inv
    return a


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _msda_fwd_kernel(
    value_ptr, meta_ptr, loc_ptr, attn_ptr, out_ptr,
    Q, S, M, L, P,
    DH: tl.constexpr, NDIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    SOFTMAX: tl.constexpr,
):
    """Output tile of one (batch, query block, head)."""
    # value: (N, S, M, DH) contiguous; meta: (L, 4) int32 rows (W, H, Dz, level start token);
    # loc: (N, Q, M, L, P, NDIM) contiguous, (x, y[, z]) in [0, 1]; attn: (N, Q, M, L, P) contiguous
    # (SOFTMAX: logits, softmaxed over L * P here); out: (N, Q, M * DH) contiguous, value dtype.
    pid_q = tl.program_id(0)
    m = tl.program_id(1)
    n = tl.program_id(2)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BQ]
    q_ok = q < Q
    c = tl.arange(0, BLOCK_D)  # [BD]
    c_ok = c < DH
    nqm = (n.to(tl.int64) * Q + q) * M + m  # [BQ] int64: (n, q, m) row
    row0 = n.to(tl.int64) * S  # first value token of this batch element
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    mx = tl.zeros([BLOCK_Q], dtype=tl.float32)
    inv = mx
    if SOFTMAX:
        mx, inv = _softmax_stats(attn_ptr, nqm, q_ok, L, P)
    for lvl in range(L):
        Wl = tl.load(meta_ptr + lvl * 4)
        Hl = tl.load(meta_ptr + lvl * 4 + 1)
        Zl = tl.load(meta_ptr + lvl * 4 + 2)
        start = tl.load(meta_ptr + lvl * 4 + 3)
        for p in range(P):
            s_idx = (nqm * L + lvl) * P + p  # [BQ] int64 sample index into attn (x NDIM into loc)
            a = _weight(attn_ptr, s_idx, q_ok, mx, inv, SOFTMAX=SOFTMAX)
            x0, y0, z0, fx, fy, fz, ok = _sample_coords(loc_ptr, s_idx, q_ok, Wl, Hl, Zl, NDIM=NDIM)
            for corner in tl.static_range(2 ** NDIM):
                token, cm, w, _dx, _dy, _dz = _corner(x0, y0, z0, fx, fy, fz, Wl, Hl, Zl, ok,
                                                      CORNER=corner, IS_3D=NDIM == 3)
                off = ((row0 + start + token) * M + m) * DH  # [BQ] int64 value row offset
                v = tl.load(value_ptr + off[:, None] + c[None, :], mask=cm[:, None] & c_ok[None, :],
                            other=0.0).to(tl.float32)
                acc += (a * w)[:, None] * v
    tl.store(out_ptr + nqm[:, None] * DH + c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & c_ok[None, :])


@triton.jit
def _msda_bwd_kernel(
    grad_out_ptr, value_ptr, meta_ptr, loc_ptr, attn_ptr, grad_loc_ptr, grad_attn_ptr,
    grad_value_ptr, key_ptr, coef_ptr, grad_w_ptr,
    Q, S, M, L, P, n_rows,
    DH: tl.constexpr, NDIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    DETERMINISTIC: tl.constexpr, SOFTMAX: tl.constexpr,
):
    """Backward of one (batch, query block, head): location and weight gradients reduced over the head dim
    in registers; grad_value by fp32 atomics, or (DETERMINISTIC) per-corner keys + coefficients."""
    # grad_out: (N, Q, M * DH) contiguous; value: (N, S, M, DH); meta: (L, 4) int32 (W, H, Dz, start);
    # loc, grad_loc: (N, Q, M, L, P, NDIM); attn, grad_attn: (N, Q, M, L, P) (all contiguous);
    # grad_value: (N, S, M, DH) fp32, zero-filled (atomic path; unused when DETERMINISTIC);
    # key: (N, Q, M, L, P, 2^NDIM) int32/int64 value row per corner, n_rows = N*S*M for invalid corners;
    # coef: (N, Q, M, L, P, 2^NDIM) fp32 attn * corner weight (both DETERMINISTIC only);
    # SOFTMAX: attn holds logits; grad_w: (N, Q, M, L, P) fp32 scratch for the gradient w.r.t. the softmax
    # weights (pass 1), grad_attn gets the logit gradient a * (grad_w - sum(a * grad_w)) (pass 2).
    pid_q = tl.program_id(0)
    m = tl.program_id(1)
    n = tl.program_id(2)
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < Q
    c = tl.arange(0, BLOCK_D)
    c_ok = c < DH
    nqm = (n.to(tl.int64) * Q + q) * M + m
    row0 = n.to(tl.int64) * S
    go = tl.load(grad_out_ptr + nqm[:, None] * DH + c[None, :], mask=q_ok[:, None] & c_ok[None, :],
                 other=0.0).to(tl.float32)  # [BQ, BD], read once
    NC: tl.constexpr = 2 ** NDIM
    mx = tl.zeros([BLOCK_Q], dtype=tl.float32)
    inv = mx
    if SOFTMAX:
        mx, inv = _softmax_stats(attn_ptr, nqm, q_ok, L, P)
    wdot = tl.zeros([BLOCK_Q], dtype=tl.float32)  # SOFTMAX: sum over L * P of a * grad_w
    for lvl in range(L):
        Wl = tl.load(meta_ptr + lvl * 4)
        Hl = tl.load(meta_ptr + lvl * 4 + 1)
        Zl = tl.load(meta_ptr + lvl * 4 + 2)
        start = tl.load(meta_ptr + lvl * 4 + 3)
        for p in range(P):
            s_idx = (nqm * L + lvl) * P + p
            a = _weight(attn_ptr, s_idx, q_ok, mx, inv, SOFTMAX=SOFTMAX)
            x0, y0, z0, fx, fy, fz, ok = _sample_coords(loc_ptr, s_idx, q_ok, Wl, Hl, Zl, NDIM=NDIM)
            g_a = tl.zeros([BLOCK_Q], dtype=tl.float32)
            g_x = tl.zeros([BLOCK_Q], dtype=tl.float32)
            g_y = tl.zeros([BLOCK_Q], dtype=tl.float32)
            g_z = tl.zeros([BLOCK_Q], dtype=tl.float32)
            for corner in tl.static_range(NC):
                token, cm, w, dx, dy, dz = _corner(x0, y0, z0, fx, fy, fz, Wl, Hl, Zl, ok,
                                                   CORNER=corner, IS_3D=NDIM == 3)
                row = (row0 + start + token) * M + m  # [BQ] int64 value row
                vmask = cm[:, None] & c_ok[None, :]
                v = tl.load(value_ptr + row[:, None] * DH + c[None, :], mask=vmask, other=0.0).to(tl.float32)
                dot = tl.sum(go * v, axis=1)  # [BQ] <grad_out, corner row>, reduced in registers
                g_a += w * dot
                g_x += dx * dot
                g_y += dy * dot
                g_z += dz * dot
                coef = a * w
                if DETERMINISTIC:
                    e_idx = s_idx * NC + corner
                    tl.store(key_ptr + e_idx, tl.where(cm, row, n_rows).to(key_ptr.dtype.element_ty), mask=q_ok)
                    tl.store(coef_ptr + e_idx, tl.where(cm, coef, 0.0), mask=q_ok)
                else:
                    tl.atomic_add(grad_value_ptr + row[:, None] * DH + c[None, :], coef[:, None] * go,
                                  mask=vmask, sem="relaxed")
            if SOFTMAX:
                tl.store(grad_w_ptr + s_idx, g_a, mask=q_ok)
                wdot += a * g_a
            else:
                tl.store(grad_attn_ptr + s_idx, g_a.to(grad_attn_ptr.dtype.element_ty), mask=q_ok)
            # d ix / d loc = size (grid = 2 loc - 1, ix = ((grid + 1) size - 1) / 2)
            gl_ty = grad_loc_ptr.dtype.element_ty
            tl.store(grad_loc_ptr + s_idx * NDIM, (g_x * a * Wl.to(tl.float32)).to(gl_ty), mask=q_ok)
            tl.store(grad_loc_ptr + s_idx * NDIM + 1, (g_y * a * Hl.to(tl.float32)).to(gl_ty), mask=q_ok)
            if NDIM == 3:
                tl.store(grad_loc_ptr + s_idx * NDIM + 2, (g_z * a * Zl.to(tl.float32)).to(gl_ty), mask=q_ok)
    if SOFTMAX:  # pass 2: softmax backward over the L * P weights of each query (scratch -> grad_attn)
        tl.debug_barrier()  # pass-1 scratch stores visible to every thread of the program
        for j in range(L * P):
            s_idx = nqm * (L * P) + j
            g_w = tl.load(grad_w_ptr + s_idx, mask=q_ok, other=0.0)
            a = _weight(attn_ptr, s_idx, q_ok, mx, inv, SOFTMAX=SOFTMAX)
            tl.store(grad_attn_ptr + s_idx, (a * (g_w - wdot)).to(grad_attn_ptr.dtype.element_ty), mask=q_ok)


@triton.jit
def _msda_gather_kernel(
    grad_out_ptr, perm_ptr, coef_ptr, seg_ptr, grad_value_ptr,
    n_rows, rows_per_prog, LPC,
    DH: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Deterministic grad_value: each value row sums its sorted segment of corner contributions."""
    # grad_out: (N, Q, M * DH) contiguous = rows (n Q + q) M + m of DH; perm: (E,) int64 corner entries
    # sorted by value row (stable); coef: (E,) fp32 per corner entry (unsorted order); seg: (n_rows + 1,)
    # int64 segment starts in perm (seg[n_rows] = number of valid entries); grad_value: (N, S, M, DH)
    # value dtype = n_rows rows of DH. LPC = L * P * 2^NDIM corner entries per (n, q, m).
    pid = tl.program_id(0)
    c = tl.arange(0, BLOCK_D)
    c_ok = c < DH
    e_ar = tl.arange(0, BLOCK_E)
    for rr in range(rows_per_prog):
        r = pid * rows_per_prog + rr
        lo = tl.load(seg_ptr + tl.minimum(r, n_rows))
        hi = tl.load(seg_ptr + tl.minimum(r + 1, n_rows))
        acc = tl.zeros([BLOCK_E, BLOCK_D], dtype=tl.float32)
        for e0 in range(lo, hi, BLOCK_E):
            e = e0 + e_ar
            e_ok = e < hi
            entry = tl.load(perm_ptr + e, mask=e_ok, other=0)
            cf = tl.load(coef_ptr + entry, mask=e_ok, other=0.0)
            g_row = entry // LPC  # (n, q, m) row of grad_out
            g = tl.load(grad_out_ptr + g_row[:, None] * DH + c[None, :], mask=e_ok[:, None] & c_ok[None, :],
                        other=0.0).to(tl.float32)
            acc += cf[:, None] * g
        tot = tl.sum(acc, axis=0)  # fixed-order tree sum
        r_vec = c * 0 + r
        tl.store(grad_value_ptr + r_vec.to(tl.int64) * DH + c, tot.to(grad_value_ptr.dtype.element_ty),
                 mask=c_ok & (r_vec < n_rows))


# ----------------------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=64)
def _meta_cached(shapes: Tuple[Tuple[int, ...], ...], device: str) -> torch.Tensor:
    rows, start = [], 0
    for s in shapes:
        z, h, w = (1, *s) if len(s) == 2 else s
        rows.append([w, h, z, start])
        start += z * h * w
    return torch.tensor(rows, dtype=torch.int32, device=device)


def level_meta(shapes: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """``(L, 4)`` int32 ``(W, H, Dz, start)`` rows from Python ints (one host-to-device copy per new
    shapes/device pair, then cached)."""
    return _meta_cached(tuple(tuple(int(v) for v in s) for s in shapes), str(device))


def _tiles(DH: int, Q: int, device: torch.device):
    """(BLOCK_Q, BLOCK_D, num_warps): the whole head dim in one tile, BLOCK_Q queries."""
    bd = triton.next_power_of_2(DH)
    elems = GPU_TILE_ELEMENTS if gpu_launch_settings(device) else INTERP_TILE_ELEMENTS
    bq = max(1, min(elems // bd, triton.next_power_of_2(Q)))
    return bq, bd, WIDE_HEAD_NUM_WARPS if bd >= 128 else GPU_NUM_WARPS


def _dims(value: torch.Tensor, loc: torch.Tensor):
    N, S, M, DH = value.shape
    _, Q, _, L, P, ndim = loc.shape
    assert value.is_contiguous() and loc.is_contiguous()
    return N, S, M, DH, Q, L, P, ndim


def msda_fwd(value: torch.Tensor, shapes: Sequence[Sequence[int]], loc: torch.Tensor,
             attn: torch.Tensor, softmax: bool = False) -> torch.Tensor:
    """``out[N, Q, M*Dh]`` (value dtype). One launch; the input guard has checked the arguments.
    ``softmax``: ``attn`` holds logits, softmaxed over L * P per (query, head) in the kernel."""
    N, S, M, DH, Q, L, P, ndim = _dims(value, loc)
    assert attn.is_contiguous()
    out = torch.empty(N, Q, M * DH, dtype=value.dtype, device=value.device)
    bq, bd, warps = _tiles(DH, Q, value.device)
    _msda_fwd_kernel[(triton.cdiv(Q, bq), M, N)](
        value_ptr=value, meta_ptr=level_meta(shapes, value.device), loc_ptr=loc, attn_ptr=attn, out_ptr=out,
        Q=Q, S=S, M=M, L=L, P=P, DH=DH, NDIM=ndim, BLOCK_Q=bq, BLOCK_D=bd, SOFTMAX=bool(softmax), num_warps=warps,
        maxnreg=WIDE_HEAD_MAXNREG if bd >= 128 else None)
    return out


def msda_bwd(grad_out: torch.Tensor, value: torch.Tensor, shapes: Sequence[Sequence[int]], loc: torch.Tensor,
             attn: torch.Tensor, deterministic: bool, softmax: bool = False):
    """``(grad_value, grad_loc, grad_attn)`` in the dtypes of value, loc, attn (``softmax``: grad_attn is
    the gradient w.r.t. the logits; an fp32 ``(N, Q, M, L, P)`` scratch holds the weight gradients).

    Atomic path: 1 launch (+ the zero fill and the final cast); deterministic: 2 launches + sort +
    searchsorted (see the module docstring)."""
    N, S, M, DH, Q, L, P, ndim = _dims(value, loc)
    grad_out = grad_out.contiguous()
    dev = value.device
    gl = torch.empty_like(loc)
    ga = torch.empty_like(attn)
    bq, bd, warps = _tiles(DH, Q, dev)
    meta = level_meta(shapes, dev)
    n_rows = N * S * M
    nc = 2 ** ndim
    grid = (triton.cdiv(Q, bq), M, N)
    common = dict(grad_out_ptr=grad_out, value_ptr=value, meta_ptr=meta, loc_ptr=loc, attn_ptr=attn,
                  grad_loc_ptr=gl, grad_attn_ptr=ga, Q=Q, S=S, M=M, L=L, P=P, n_rows=n_rows,
                  grad_w_ptr=torch.empty(attn.shape, dtype=torch.float32, device=dev) if softmax else ga,
                  DH=DH, NDIM=ndim, BLOCK_Q=bq, BLOCK_D=bd, SOFTMAX=bool(softmax), num_warps=warps,
                  maxnreg=WIDE_HEAD_MAXNREG if bd >= 128 else BWD_MAXNREG)
    if not deterministic:
        gv32 = torch.zeros(N, S, M, DH, dtype=torch.float32, device=dev)
        _msda_bwd_kernel[grid](grad_value_ptr=gv32, key_ptr=gv32, coef_ptr=gv32, DETERMINISTIC=False, **common)
        return (gv32 if value.dtype == torch.float32 else gv32.to(value.dtype)), gl, ga
    n_entries = N * Q * M * L * P * nc
    key_dtype = torch.int32 if n_rows < 2 ** 31 - 1 else torch.int64
    keys = torch.empty(n_entries, dtype=key_dtype, device=dev)
    coef = torch.empty(n_entries, dtype=torch.float32, device=dev)
    _msda_bwd_kernel[grid](grad_value_ptr=coef, key_ptr=keys, coef_ptr=coef, DETERMINISTIC=True, **common)
    sorted_keys, perm = torch.sort(keys, stable=True)
    seg = torch.searchsorted(sorted_keys, torch.arange(n_rows + 1, dtype=key_dtype, device=dev))
    gv = torch.empty_like(value)
    gpu = gpu_launch_settings(dev)
    rpp = GATHER_ROWS_PER_PROG[gpu]
    # both settings keep the tile at GATHER_TILE_ELEMENTS (a wider interpreter tile spilled at Dh = 256)
    block_e = max(8, min(32 if gpu else GATHER_BLOCK_E_INTERP, GATHER_TILE_ELEMENTS // bd))
    _msda_gather_kernel[(triton.cdiv(n_rows, rpp),)](
        grad_out_ptr=grad_out, perm_ptr=perm, coef_ptr=coef, seg_ptr=seg, grad_value_ptr=gv,
        n_rows=n_rows, rows_per_prog=rpp, LPC=L * P * nc, DH=DH, BLOCK_E=block_e, BLOCK_D=bd,
        num_warps=GPU_NUM_WARPS)
    return gv, gl, ga


register_kernel("msda_fwd", _msda_fwd_kernel)
register_kernel("msda_bwd", _msda_bwd_kernel)
register_kernel("msda_gather", _msda_gather_kernel)
