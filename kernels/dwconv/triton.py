"""Triton kernels and launchers for the multi-kernel depthwise convolution (stride 1, same padding).

Layout: 2D inputs are treated as 3D with ``D = 1`` and a depth kernel of 1, so one kernel pair serves
both. All strides are runtime arguments: contiguous (NC[D]HW) and channels-last inputs take the
same code (channels-last loads are strided; a channel-tiled NHWC variant is future work).

Tiling: a program owns one ``(n, c)`` plane, one ``BLOCK_H x BLOCK_W`` tile of it and, in 3D, a run
of ``d_per_prog`` depth slices. The halo (``K - 1`` rows/columns) is re-read from cache, so HBM
traffic per program is ``(BH + K - 1)(BW + K - 1) / (BH BW)`` of the tile (1.10 for K=3 up to 1.41 for
K=9 at 32x64), and in 3D the depth halo is paid once per run of slices.

All channel groups run in one launch: channel c belongs to group ``c // CG`` and a constexpr branch
per group specialises the tap loops to that group's kernel size (summed mode: one group, the merged
kernel).

Backward is one fused launch: it reads ``grad_y`` and ``x`` tiles once (per program) and writes
``grad_x`` plus per-program partial sums of ``grad_w`` (``K^d`` taps) and ``grad_b``; a second
launch sums the partials over programs in a fixed order into the packed weight-gradient rows — a
deterministic two-stage reduction, no float atomics: the same inputs give bit-identical gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ..registry import register_device_function, register_kernel

BLOCK_2D = (32, 64, 16)  # BLOCK_H, BLOCK_W, num_warps (4 outputs per thread: no spills at K=9)
# an explicit register budget: without one ptxas may squeeze to 64-96 registers (more blocks per SM) and spill
# (seen on sm_80 in bf16/fp16); 128 is the most 512 threads can have, 3D blocks (128 threads) may use 255
MAXNREG = {2: 128, 3: 255}
BLOCK_3D = (16, 32, 4)
MAX_D_PER_PROG = 32


@register_device_function
@triton.jit
def _between(i, hi):
    """0 <= i < hi, elementwise."""
    return (i >= 0) & (i < hi)


@register_device_function
@triton.jit
def _fwd_tile(x_base, w_base, y_base, bias, offs_h, offs_w, col0, out_hw, pid_d, d_per_prog, D, H, W,
              sxd, sxh, sxw, syd, syh, syw,
              K: tl.constexpr, KD: tl.constexpr, KMAX: tl.constexpr, W_OFF: tl.constexpr, WD_OFF: tl.constexpr,
              BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program's output tile, for a K x K (x K) kernel centred in the packed K_max grid."""
    for dd in range(0, d_per_prog):
        d = pid_d * d_per_prog + dd
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for kd in range(KD):  # depth taps: a runtime loop (KD = 1 in 2D)
            zd = d + kd - KD // 2
            x_d = x_base + zd.to(tl.int64) * sxd
            d_ok = _between(col0 + zd, D)
            w_d = w_base + (WD_OFF + kd) * KMAX * KMAX
            for kh in range(K):  # runtime loop: bounded registers, fast compile
                ih = offs_h + (kh - K // 2)
                h_ok = (ih >= 0) & (ih < H) & d_ok
                for kw in tl.static_range(K):
                    iw = offs_w + (kw - K // 2)
                    m = h_ok & (iw >= 0) & (iw < W)
                    xv = tl.load(x_d + ih * sxh + iw * sxw, mask=m, other=0.0).to(tl.float32)
                    wv = tl.load(w_d + (W_OFF + kh) * KMAX + (W_OFF + kw)).to(tl.float32)
                    acc += xv * wv
        acc += bias
        tl.store(y_base + d.to(tl.int64) * syd + offs_h * syh + offs_w * syw,
                 acc.to(y_base.dtype.element_ty), mask=out_hw & _between(col0 + d, D))


@triton.jit
def _dwconv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    C, CG, D, H, W,
    sxn, sxc, sxd, sxh, sxw,
    syn, syc, syd, syh, syw,
    w_row, n_tiles_w, d_per_prog,
    KS: tl.constexpr, G: tl.constexpr, KMAX: tl.constexpr, IS_3D: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """All channel groups in one launch: channel c belongs to group c // CG, whose kernel size is
    KS[group] (a constexpr branch per group, so each group's tap loops are specialised)."""
    # x, y: (N, C, D, H, W) with strides sx*/sy* (2D: D = 1, depth stride 0); w: (C, w_row = KMAX^d)
    # packed weights, contiguous; b: (C,) (unused without HAS_BIAS). Grid (N C, H tiles x W tiles, depth runs).
    pid_nc = tl.program_id(0)
    pid_hw = tl.program_id(1)
    pid_d = tl.program_id(2)
    n = pid_nc // C
    c = pid_nc % C
    g = c // CG
    offs_h = (pid_hw // n_tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # [BH, 1]
    offs_w = (pid_hw % n_tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]  # [1, BW]
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    y_base = y_ptr + n.to(tl.int64) * syn + c.to(tl.int64) * syc
    w_base = w_ptr + c * w_row
    out_hw = (offs_h < H) & (offs_w < W)
    col0 = offs_h * 0  # [BH, 1] zeros: scalar conditions join masks as tensors (interpreter-safe)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(b_ptr + c).to(tl.float32)
    for gi in tl.static_range(G):
        if g == gi:
            K: tl.constexpr = KS[gi]
            _fwd_tile(x_base, w_base, y_base, bias, offs_h, offs_w, col0, out_hw, pid_d, d_per_prog, D, H, W,
                      sxd, sxh, sxw, syd, syh, syw,
                      K=K, KD=K if IS_3D else 1, KMAX=KMAX, W_OFF=(KMAX - K) // 2,
                      WD_OFF=(KMAX - K) // 2 if IS_3D else 0, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W)


@register_device_function
@triton.jit
def _bwd_tile(g_base, x_base, w_base, gx_base, p_base, offs_h, offs_w, col0, in_hw, pid_d, d_per_prog,
              D, H, W, sgd, sgh, sgw, sxd, sxh, sxw, sdd, sdh, sdw, BIAS_COL,
              K: tl.constexpr, KD: tl.constexpr, KMAX: tl.constexpr, W_OFF: tl.constexpr, WD_OFF: tl.constexpr,
              HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program's grad_x tile and its partial sums of grad_w (K^d taps) and grad_b."""
    # grad_x = correlation of grad_y with the flipped kernel
    for dd in range(0, d_per_prog):
        d = pid_d * d_per_prog + dd
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for kd in range(KD):
            zd = d - (kd - KD // 2)
            g_d = g_base + zd.to(tl.int64) * sgd
            d_ok = _between(col0 + zd, D)
            w_d = w_base + (WD_OFF + kd) * KMAX * KMAX
            for kh in range(K):  # runtime loop: bounded registers, fast compile
                ih = offs_h - (kh - K // 2)
                h_ok = (ih >= 0) & (ih < H) & d_ok
                for kw in tl.static_range(K):
                    iw = offs_w - (kw - K // 2)
                    m = h_ok & (iw >= 0) & (iw < W)
                    gv = tl.load(g_d + ih * sgh + iw * sgw, mask=m, other=0.0).to(tl.float32)
                    wv = tl.load(w_d + (W_OFF + kh) * KMAX + (W_OFF + kw)).to(tl.float32)
                    acc += gv * wv
        tl.store(gx_base + d.to(tl.int64) * sdd + offs_h * sdh + offs_w * sdw,
                 acc.to(gx_base.dtype.element_ty), mask=in_hw & _between(col0 + d, D))

    # grad_w partial: for each tap, sum over this program's voxels of grad_y * shifted x
    for kd in range(KD):
        for kh in range(K):  # runtime loop: bounded registers, fast compile
            for kw in tl.static_range(K):
                acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
                ih = offs_h + (kh - K // 2)
                iw = offs_w + (kw - K // 2)
                hw_ok = in_hw & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                for dd in range(0, d_per_prog):
                    d = pid_d * d_per_prog + dd
                    zd = d + kd - KD // 2
                    gv = tl.load(g_base + d.to(tl.int64) * sgd + offs_h * sgh + offs_w * sgw,
                                 mask=in_hw & _between(col0 + d, D), other=0.0).to(tl.float32)
                    xv = tl.load(x_base + zd.to(tl.int64) * sxd + ih * sxh + iw * sxw,
                                 mask=hw_ok & _between(col0 + zd, D) & _between(col0 + d, D),
                                 other=0.0).to(tl.float32)
                    acc += gv * xv
                tl.store(p_base + (kd * K + kh) * K + kw, tl.sum(tl.sum(acc, axis=1), axis=0))
    if HAS_BIAS:
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
        for dd in range(0, d_per_prog):
            d = pid_d * d_per_prog + dd
            acc += tl.load(g_base + d.to(tl.int64) * sgd + offs_h * sgh + offs_w * sgw,
                           mask=in_hw & _between(col0 + d, D), other=0.0).to(tl.float32)
        tl.store(p_base + BIAS_COL, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _dwconv_bwd_kernel(
    gy_ptr, x_ptr, w_ptr, gx_ptr, part_ptr,
    N, C, CG, D, H, W,
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    sdn, sdc, sdd, sdh, sdw,
    w_row, n_tiles_w, n_tiles_hw, n_dchunks, d_per_prog,
    KS: tl.constexpr, G: tl.constexpr, KMAX: tl.constexpr, IS_3D: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Fused backward, all channel groups in one launch. Partial row layout: ``[group taps (k^d), ...,
    bias at column w_row]``, one row per program, ``part[C, N * tiles * depth chunks, w_row + 1]``."""
    # gy, x, gx: (N, C, D, H, W) with strides sg*/sx*/sd*; w: (C, w_row) packed weights; part: fp32 rows above
    pid_nc = tl.program_id(0)
    pid_hw = tl.program_id(1)
    pid_d = tl.program_id(2)
    n = pid_nc // C
    c = pid_nc % C
    g = c // CG
    offs_h = (pid_hw // n_tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    offs_w = (pid_hw % n_tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    g_base = gy_ptr + n.to(tl.int64) * sgn + c.to(tl.int64) * sgc
    x_base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    gx_base = gx_ptr + n.to(tl.int64) * sdn + c.to(tl.int64) * sdc
    w_base = w_ptr + c * w_row
    in_hw = (offs_h < H) & (offs_w < W)
    col0 = offs_h * 0
    row = ((c * N + n) * n_tiles_hw + pid_hw) * n_dchunks + pid_d
    p_base = part_ptr + row.to(tl.int64) * (w_row + 1)
    for gi in tl.static_range(G):
        if g == gi:
            K: tl.constexpr = KS[gi]
            _bwd_tile(g_base, x_base, w_base, gx_base, p_base, offs_h, offs_w, col0, in_hw, pid_d, d_per_prog,
                      D, H, W, sgd, sgh, sgw, sxd, sxh, sxw, sdd, sdh, sdw, w_row,
                      K=K, KD=K if IS_3D else 1, KMAX=KMAX, W_OFF=(KMAX - K) // 2,
                      WD_OFF=(KMAX - K) // 2 if IS_3D else 0, HAS_BIAS=HAS_BIAS, BLOCK_H=BLOCK_H,
                      BLOCK_W=BLOCK_W)


@register_device_function
@triton.jit
def _reduce_row(base, gw_row_ptr, gb_ptr, c, n_rows, part_row,
                K: tl.constexpr, KD: tl.constexpr, KMAX: tl.constexpr, W_OFF: tl.constexpr, WD_OFF: tl.constexpr,
                ROW: tl.constexpr, ROW_P2: tl.constexpr, BLOCK_R: tl.constexpr, HAS_BIAS: tl.constexpr):
    j = tl.arange(0, ROW_P2)[None, :]  # destination index in the packed K_max^d row
    jd = j // (KMAX * KMAX)
    jh = (j // KMAX) % KMAX
    jw = j % KMAX
    inside = (j < ROW) & (jd >= WD_OFF) & (jd < WD_OFF + KD) & (jh >= W_OFF) & (jh < W_OFF + K) \
        & (jw >= W_OFF) & (jw < W_OFF + K)
    src = ((jd - WD_OFF) * K + (jh - W_OFF)) * K + (jw - W_OFF)  # tap index in this group's partials
    acc = tl.zeros([BLOCK_R, ROW_P2], dtype=tl.float32)
    bacc = tl.zeros([BLOCK_R, 1], dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)[:, None]
        acc += tl.load(base + r * part_row + src, mask=(r < n_rows) & inside, other=0.0)
        if HAS_BIAS:
            bacc += tl.load(base + r * part_row + ROW, mask=r < n_rows, other=0.0)
    tl.store(gw_row_ptr + j, tl.sum(acc, axis=0)[None, :].to(gw_row_ptr.dtype.element_ty), mask=j < ROW)
    b = tl.sum(bacc, axis=0)  # [1]
    tl.store(gb_ptr + c + tl.arange(0, 1), b.to(gb_ptr.dtype.element_ty))


@triton.jit
def _dwconv_wgrad_reduce_kernel(
    part_ptr, gw_ptr, gb_ptr,
    n_rows, CG,
    KS: tl.constexpr, G: tl.constexpr, KMAX: tl.constexpr, IS_3D: tl.constexpr,
    ROW: tl.constexpr, ROW_P2: tl.constexpr, BLOCK_R: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Stage 2 of the weight-gradient reduction: one program per channel sums its partial rows in a
    fixed order and writes the whole packed ``K_max^d`` weight-gradient row (zeros outside the
    group's window) and the bias gradient, in the output dtypes."""
    # part: (C, n_rows, ROW + 1) fp32 partial rows; gw: (C, ROW) packed weight gradient; gb: (C,)
    c = tl.program_id(0)
    g = c // CG
    base = part_ptr + c.to(tl.int64) * n_rows * (ROW + 1)
    for gi in tl.static_range(G):
        if g == gi:
            K: tl.constexpr = KS[gi]
            _reduce_row(base, gw_ptr + c * ROW, gb_ptr, c, n_rows, ROW + 1,
                        K=K, KD=K if IS_3D else 1, KMAX=KMAX, W_OFF=(KMAX - K) // 2,
                        WD_OFF=(KMAX - K) // 2 if IS_3D else 0, ROW=ROW, ROW_P2=ROW_P2, BLOCK_R=BLOCK_R,
                        HAS_BIAS=HAS_BIAS)


# ----------------------------------------------------------------------------- launchers
def _geometry(x: torch.Tensor):
    """(N, C, D, H, W) and 5 strides of ``x``; 2D inputs get D = 1 and a zero depth stride."""
    if x.dim() == 4:
        N, C, H, W = x.shape
        sn, sc, sh, sw = x.stride()
        return (N, C, 1, H, W), (sn, sc, 0, sh, sw)
    return tuple(x.shape), tuple(x.stride())


def _launch_sizes(x: torch.Tensor, weight: torch.Tensor, group_kernel_sizes: Sequence[int]):
    """(d, C, G, K) of a launch; the public API's input guard has checked the arguments."""
    d, C, G, K = x.dim() - 2, x.shape[1], len(group_kernel_sizes), max(group_kernel_sizes)
    assert C % G == 0 and tuple(weight.shape) == (C, K ** d) and weight.is_contiguous()
    return d, C, G, K


def _strides(prefix: str, strides) -> dict:
    """Keyword arguments ``{prefix}n .. {prefix}w`` of the five strides."""
    return {prefix + axis: st for axis, st in zip("ncdhw", strides)}


def _tiling(d: int, D: int, H: int, W: int):
    bh, bw, warps = BLOCK_2D if d == 2 else BLOCK_3D
    dpp = 1 if d == 2 else min(D, MAX_D_PER_PROG)
    return bh, bw, warps, dpp, triton.cdiv(H, bh), triton.cdiv(W, bw), triton.cdiv(D, dpp)


def dwconv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               group_kernel_sizes: Sequence[int]) -> torch.Tensor:
    """``y[N, C, *S]`` from ``x[N, C, *S]``, packed ``weight[C, K^d]``, ``bias[C]`` or None. One launch."""
    d, C, G, K = _launch_sizes(x, weight, group_kernel_sizes)
    y = torch.empty_like(x)
    (N, _, D, H, W), sx = _geometry(x)
    _, sy = _geometry(y)
    bh, bw, warps, dpp, nth, ntw, ndc = _tiling(d, D, H, W)
    _dwconv_fwd_kernel[(N * C, nth * ntw, ndc)](
        x_ptr=x, w_ptr=weight, b_ptr=bias if bias is not None else weight, y_ptr=y,
        C=C, CG=C // G, D=D, H=H, W=W, **_strides("sx", sx), **_strides("sy", sy), w_row=weight.shape[1],
        n_tiles_w=ntw, d_per_prog=dpp, KS=tuple(int(k) for k in group_kernel_sizes), G=G, KMAX=K, IS_3D=d == 3,
        HAS_BIAS=bias is not None, BLOCK_H=bh, BLOCK_W=bw, num_warps=warps, maxnreg=MAXNREG[d])
    return y


def dwconv_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
               group_kernel_sizes: Sequence[int], has_bias: bool):
    """``(grad_x, grad_weight[C, K^d], grad_bias[C])``; grad_weight is 0 outside each group's window,
    grad_bias is 0 when ``has_bias`` is False. Two launches: the fused backward and the fixed-order
    stage-2 reduction of its per-program partials."""
    d, C, G, K = _launch_sizes(x, weight, group_kernel_sizes)
    gx = torch.empty_like(x)
    (N, _, D, H, W), sx = _geometry(x)
    _, sg = _geometry(grad_y)
    _, sd = _geometry(gx)
    bh, bw, warps, dpp, nth, ntw, ndc = _tiling(d, D, H, W)
    row = weight.shape[1]
    n_rows = N * nth * ntw * ndc
    part = torch.empty(C, n_rows, row + 1, dtype=torch.float32, device=x.device)
    gw = torch.empty_like(weight)  # every element written by the stage-2 kernel
    gb = torch.empty(C, dtype=x.dtype, device=x.device)
    consts = dict(KS=tuple(int(k) for k in group_kernel_sizes), G=G, KMAX=K, IS_3D=d == 3, HAS_BIAS=has_bias)
    _dwconv_bwd_kernel[(N * C, nth * ntw, ndc)](
        gy_ptr=grad_y, x_ptr=x, w_ptr=weight, gx_ptr=gx, part_ptr=part,
        N=N, C=C, CG=C // G, D=D, H=H, W=W, **_strides("sg", sg), **_strides("sx", sx), **_strides("sd", sd),
        w_row=row, n_tiles_w=ntw, n_tiles_hw=nth * ntw, n_dchunks=ndc, d_per_prog=dpp,
        BLOCK_H=bh, BLOCK_W=bw, num_warps=warps, maxnreg=MAXNREG[d], **consts)
    row_p2 = triton.next_power_of_2(row)
    _dwconv_wgrad_reduce_kernel[(C,)](
        part_ptr=part, gw_ptr=gw, gb_ptr=gb, n_rows=n_rows, CG=C // G,
        ROW=row, ROW_P2=row_p2, BLOCK_R=max(1, 4096 // row_p2), num_warps=4, **consts)
    return gx, gw, gb


register_kernel("dwconv_fwd", _dwconv_fwd_kernel)
register_kernel("dwconv_wgrad_reduce", _dwconv_wgrad_reduce_kernel)
register_kernel("dwconv_bwd", _dwconv_bwd_kernel)
