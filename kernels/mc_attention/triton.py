"""Triton kernels and launchers of Monte-Carlo channel attention (SvANet ``MoCAttention``), 2D and 3D.

Layout: ``x`` is viewed as ``(N, C, S)`` (``S`` = the flattened spatial size): contiguous inputs have the
spatial axis innermost (offset ``(n C + c) S + s``), channels-last inputs the channel axis (offset
``(n S + s) C + c``); the constexpr ``CL`` picks the formula, so the unit-stride axis is known to the
compiler in both cases. ``y`` / ``grad_x`` are allocated like ``x`` (same memory format) and
``grad_y`` is brought to x's format (a no-op for the usual gradients). Offsets are 64-bit.

Tiling: a program owns one batch item ``n``, a block of ``BLOCK_C`` channels and a chunk of
``steps * BLOCK_S`` spatial positions (grid ``(N * channel blocks, chunks)``); the chunk count gives the
GPU about four programs per SM (the interpreter: one chunk, few long programs).

Membership (the rule of :mod:`.reference`): each program loads the three raw draws, derives ``k``,
``K = k^d``, ``cell`` and the mixed seed once, and hashes the flat spatial index of each position it
visits: ``member = mix32(p ^ mix32(seed)) % K == cell``. No permutation tensor, no shuffled copy.

Kernels
-------
* ``_mca_pool_kernel`` (forward pass 1): per program, fp32 partial sums over its chunk of the member
  positions and of all positions (the global-mean fallback when the subset is empty; eval needs only
  the latter) into ``part[N, chunks, 2, C]``, and the member count of its chunk (programs of ``n = 0`` and
  channel block 0) into ``count[chunks]`` (int32). Reads ``x`` once.
* ``_mca_scale_kernel``: forward pass 2 ``y = x * gate[n, c]`` (reads ``x``, writes ``y``); backward pass
  2 ``grad_x = grad_y * gate + member(p) * coef[n, 0, c] + coef[n, 1, c]`` (reads ``grad_y``, writes
  ``grad_x``), where ``coef = (ddesc / count, 0)`` or ``(0, ddesc / S)`` when the subset is empty or in
  eval: the path through the pooled descriptor, recomputing membership instead of storing it.
* ``_mca_dot_kernel`` (backward pass 1): fp32 partial sums of ``grad_y * x`` per ``(n, c)`` over the
  program's chunk into ``part[N, chunks, C]``. Reads ``grad_y`` and ``x`` once.

Between the kernels (torch, ``(N, C)``-sized work): the partials are summed over chunks with
``torch.sum`` (a fixed order: no float atomics anywhere, gradients bit-identical run to run), the
descriptor and the SE MLP (fp32) give the gate; in the backward the MLP's vjp is written out by hand
(gives ``grad_w1, grad_b1, grad_w2, grad_b2`` and ``ddesc``).

Traffic: forward ``3 N E`` (read x twice, write y), backward ``4 N E`` (read grad_y and x, grad_y again,
write grad_x), plus ``(N, C)``-sized partials. The pool pass reads every position: it needs the
all-positions sum for the empty-subset fallback, and a random subset of ``S / k^d`` positions touches
most 32-byte sectors anyway (``1 - (1 - 1/k^d)^8`` of them in fp32 at ``k^d = 9``: 61%).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ..dispatch import gpu_launch_settings, sm_count
from ..registry import register_device_function, register_kernel

GPU_TILE = 2048  # elements per program iteration on a GPU: 16 per thread at 4 warps
GPU_TILE_CL = 1024  # channels-last: 8 per thread (the 64 x 32 tile took 128 registers on sm_90a, 64 x 16 takes ~80)
GPU_NUM_WARPS = 4
GPU_MAX_BLOCK_S = 512  # contiguous: a 2 KB fp32 row segment per channel
GPU_MAX_BLOCK_C = 64  # channels-last: 256 B fp32 per position
GPU_PROGRAMS_PER_SM = 4
INTERP_TILE = 4096  # the interpreter: few, long programs (one chunk per (n, channel block)); 8 per thread
INTERP_NUM_WARPS = 16  # the interpreter ignores warps; the compile check builds these tiles too
INTERP_MAX_BLOCK_S = 4096
INTERP_MAX_BLOCK_C = 256
# a register budget for both settings: without one ptxas squeezed the 16-warp (interpreter-tile) builds to 64
# registers and spilled; the kernels need at most ~110 (16 fp32 elements per thread, 64-bit addresses)
MAXNREG = 128

_M32 = tl.constexpr(0xFFFFFFFF)
_MUL1 = tl.constexpr(0x7FEB352D)  # = reference.MIX_MUL1
_MUL2 = tl.constexpr(0x2C1B3C6D)  # = reference.MIX_MUL2


# ----------------------------------------------------------------------------- jit helpers
@register_device_function
@triton.jit
def _mix32(h):
    """:func:`segfuse.kernels.mc_attention.reference.mix32` on int64 values in [0, 2^32)."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * _MUL1) & _M32
    h = h ^ (h >> 15)
    h = (h * _MUL2) & _M32
    return h ^ (h >> 16)


@register_device_function
@triton.jit
def _subset(params_ptr, CHOICES: tl.constexpr, IS_3D: tl.constexpr):
    """``(K = k^d, cell, mixed seed)`` (int64 scalars) from the raw draws ``(r_k, r_cell, seed)``."""
    r_k = tl.load(params_ptr)
    r_cell = tl.load(params_ptr + 1)
    seed = tl.load(params_ptr + 2)
    idx = r_k % len(CHOICES)
    k = r_k * 0
    for j in tl.static_range(len(CHOICES)):
        k = tl.where(idx == j, CHOICES[j], k)
    kk = k * k
    if IS_3D:
        kk = kk * k
    return kk, r_cell % kk, _mix32(seed)


@triton.jit
def _mca_pool_kernel(
    x_ptr, params_ptr, part_ptr, count_ptr,
    C, S, n_cblocks, n_chunks, steps,
    CHOICES: tl.constexpr, IS_3D: tl.constexpr, RANDOM: tl.constexpr, CL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Forward pass 1: partial member / total sums per (n, channel block, chunk) and the chunk's member count."""
    # x: (N, C, S) contiguous, or (N, S, C) with CL; params: int64 (3,) raw draws (None in eval);
    # part: fp32 (N, n_chunks, 2, C) [member sum, total sum]; count: int32 (n_chunks,) (None in eval)
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = pid // n_cblocks
    cb = pid % n_cblocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x_base = x_ptr + n.to(tl.int64) * C * S
    c64 = c.to(tl.int64)[:, None]
    tacc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    if RANDOM:
        kk, cell, seed = _subset(params_ptr, CHOICES, IS_3D)
        macc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        cacc = tl.zeros([BLOCK_S], dtype=tl.int32)
    for it in range(0, steps):
        s = (chunk * steps + it) * BLOCK_S + tl.arange(0, BLOCK_S)
        s_ok = s < S
        s64 = s.to(tl.int64)
        if CL:
            offs = s64[None, :] * C + c64
        else:
            offs = c64 * S + s64[None, :]
        xv = tl.load(x_base + offs, mask=c_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        tacc += xv
        if RANDOM:
            member = ((_mix32(s64 ^ seed) % kk) == cell) & s_ok
            macc += tl.where(member[None, :], xv, 0.0)
            cacc += member.to(tl.int32)
    row = part_ptr + (n.to(tl.int64) * n_chunks + chunk) * 2 * C
    tl.store(row + C + c, tl.sum(tacc, axis=1), mask=c_ok)
    if RANDOM:
        tl.store(row + c, tl.sum(macc, axis=1), mask=c_ok)
        tl.store(count_ptr + chunk, tl.sum(cacc, axis=0), mask=pid == 0)


@triton.jit
def _mca_scale_kernel(
    src_ptr, dst_ptr, gate_ptr, coef_ptr, params_ptr,
    C, S, n_cblocks, steps,
    CHOICES: tl.constexpr, IS_3D: tl.constexpr, RANDOM: tl.constexpr, ADD: tl.constexpr, CL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """``dst = src * gate[n, c]``; with ADD also ``+ member(p) * coef[n, 0, c] + coef[n, 1, c]`` (the
    backward's path through the descriptor; member(p) = 0 without RANDOM)."""
    # src, dst: (N, C, S) contiguous, or (N, S, C) with CL (same format); gate: fp32 (N, C);
    # coef: fp32 (N, 2, C) (None without ADD); params: int64 (3,) raw draws (None without RANDOM)
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = pid // n_cblocks
    cb = pid % n_cblocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    base = n.to(tl.int64) * C * S
    c64 = c.to(tl.int64)[:, None]
    gate = tl.load(gate_ptr + n * C + c, mask=c_ok, other=0.0)[:, None]
    if ADD:
        coef_all = tl.load(coef_ptr + (2 * n + 1) * C + c, mask=c_ok, other=0.0)[:, None]
        if RANDOM:
            coef_mem = tl.load(coef_ptr + 2 * n * C + c, mask=c_ok, other=0.0)[:, None]
    if RANDOM:
        kk, cell, seed = _subset(params_ptr, CHOICES, IS_3D)
    for it in range(0, steps):
        s = (chunk * steps + it) * BLOCK_S + tl.arange(0, BLOCK_S)
        s_ok = s < S
        s64 = s.to(tl.int64)
        if CL:
            offs = base + s64[None, :] * C + c64
        else:
            offs = base + c64 * S + s64[None, :]
        m = c_ok[:, None] & s_ok[None, :]
        out = tl.load(src_ptr + offs, mask=m, other=0.0).to(tl.float32) * gate
        if ADD:
            out += coef_all
            if RANDOM:
                member = (_mix32(s64 ^ seed) % kk) == cell
                out += tl.where(member[None, :], coef_mem, 0.0)
        tl.store(dst_ptr + offs, out.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _mca_dot_kernel(
    gy_ptr, x_ptr, part_ptr,
    C, S, n_cblocks, n_chunks, steps,
    CL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Backward pass 1: partial sums of ``grad_y * x`` per (n, channel block, chunk)."""
    # gy, x: (N, C, S) contiguous, or (N, S, C) with CL (same format); part: fp32 (N, n_chunks, C)
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = pid // n_cblocks
    cb = pid % n_cblocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    base = n.to(tl.int64) * C * S
    c64 = c.to(tl.int64)[:, None]
    acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    for it in range(0, steps):
        s = (chunk * steps + it) * BLOCK_S + tl.arange(0, BLOCK_S)
        s64 = s.to(tl.int64)
        if CL:
            offs = base + s64[None, :] * C + c64
        else:
            offs = base + c64 * S + s64[None, :]
        m = c_ok[:, None] & (s < S)[None, :]
        g = tl.load(gy_ptr + offs, mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        acc += g * xv
    tl.store(part_ptr + (n.to(tl.int64) * n_chunks + chunk) * C + c, tl.sum(acc, axis=1), mask=c_ok)


# ----------------------------------------------------------------------------- launchers
def is_channels_last(x: torch.Tensor) -> bool:
    """x is channels-last (and not also contiguous: size-1 axes make some tensors both)."""
    if x.is_contiguous():
        return False
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.is_contiguous(memory_format=fmt)


def _memory_format(x: torch.Tensor):
    if is_channels_last(x):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def _launch(x: torch.Tensor):
    """Geometry and tiling of a launch over ``x``: dict of ``C, S, CL, BLOCK_C, BLOCK_S, n_cblocks,
    n_chunks, steps, num_warps`` (the input guard made ``x`` contiguous or channels-last)."""
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    cl = is_channels_last(x)
    assert cl or x.is_contiguous()
    gpu = gpu_launch_settings(x.device)
    tile = (GPU_TILE_CL if cl else GPU_TILE) if gpu else INTERP_TILE
    if cl:
        bc = min(triton.next_power_of_2(C), GPU_MAX_BLOCK_C if gpu else INTERP_MAX_BLOCK_C)
        bs = max(1, min(triton.next_power_of_2(S), tile // bc))
    else:
        bs = min(triton.next_power_of_2(S), GPU_MAX_BLOCK_S if gpu else INTERP_MAX_BLOCK_S)
        bc = max(1, min(triton.next_power_of_2(C), tile // bs))
    n_cb = triton.cdiv(C, bc)
    n_sb = triton.cdiv(S, bs)
    chunks = 1
    if gpu:  # about GPU_PROGRAMS_PER_SM programs per SM, each over a run of whole spatial blocks
        chunks = max(1, min(n_sb, triton.cdiv(GPU_PROGRAMS_PER_SM * sm_count(x.device), N * n_cb)))
    steps = triton.cdiv(n_sb, chunks)
    chunks = triton.cdiv(n_sb, steps)
    return dict(N=N, C=C, S=S, CL=cl, BLOCK_C=bc, BLOCK_S=bs, n_cblocks=n_cb, n_chunks=chunks, steps=steps,
                num_warps=GPU_NUM_WARPS if gpu else INTERP_NUM_WARPS, maxnreg=MAXNREG)


def _rule(pool_sizes: Sequence[int], d: int, subset: Optional[torch.Tensor]) -> dict:
    """The membership constexprs; without a subset they are unused, so fixed (one build fewer per choice set)."""
    if subset is None:
        return dict(CHOICES=(1,), IS_3D=False, RANDOM=False)
    return dict(CHOICES=tuple(int(k) for k in pool_sizes), IS_3D=d == 3, RANDOM=True)


def _gate(desc, w1, b1, w2, b2):
    """fp32 SE excitation ``sigmoid(W2 relu(W1 desc + b1) + b2)``."""
    a1 = torch.relu(torch.nn.functional.linear(desc, w1.float(), b1.float()))
    return torch.sigmoid(torch.nn.functional.linear(a1, w2.float(), b2.float()))


def mca_fwd(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
            subset: Optional[torch.Tensor], pool_sizes: Sequence[int]):
    """``(y, desc fp32 (N, C), gate fp32 (N, C), count int64 (1,))``; ``subset`` None = eval (GAP).
    Two launches (pool, scale) around ``(N, C)``-sized torch work."""
    g = _launch(x)
    N, C, S, chunks = g["N"], g["C"], g["S"], g["n_chunks"]
    rule = _rule(pool_sizes, x.dim() - 2, subset)
    tiles = dict(C=C, S=S, n_cblocks=g["n_cblocks"], steps=g["steps"], CL=g["CL"], BLOCK_C=g["BLOCK_C"],
                 BLOCK_S=g["BLOCK_S"], num_warps=g["num_warps"], maxnreg=g["maxnreg"])
    grid = (N * g["n_cblocks"], chunks)
    part = torch.empty(N, chunks, 2, C, dtype=torch.float32, device=x.device)
    count_part = torch.empty(chunks, dtype=torch.int32, device=x.device) if subset is not None else None
    _mca_pool_kernel[grid](x_ptr=x, params_ptr=subset, part_ptr=part, count_ptr=count_part, n_chunks=chunks,
                           **rule, **tiles)
    tsum = part[:, :, 1].sum(1)
    if subset is None:
        desc = tsum / S
        count = torch.full((1,), S, dtype=torch.int64, device=x.device)
    else:
        count = count_part.sum(dtype=torch.int64).reshape(1)
        desc = torch.where(count > 0, part[:, :, 0].sum(1) / count.clamp_min(1), tsum / S)
    gate = _gate(desc, w1, b1, w2, b2)
    y = torch.empty_like(x)
    _mca_scale_kernel[grid](src_ptr=x, dst_ptr=y, gate_ptr=gate, coef_ptr=None, params_ptr=None, ADD=False,
                            **_rule(pool_sizes, x.dim() - 2, None), **tiles)
    return y, desc, gate, count


def mca_bwd(grad_y: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor, subset: Optional[torch.Tensor], desc: torch.Tensor, gate: torch.Tensor,
            count: torch.Tensor, pool_sizes: Sequence[int]):
    """``(grad_x, grad_w1, grad_b1, grad_w2, grad_b2)``. Two launches (dot, scale) around the MLP's vjp."""
    grad_y = grad_y.contiguous(memory_format=_memory_format(x))
    g = _launch(x)
    N, C, S, chunks = g["N"], g["C"], g["S"], g["n_chunks"]
    tiles = dict(C=C, S=S, n_cblocks=g["n_cblocks"], steps=g["steps"], CL=g["CL"], BLOCK_C=g["BLOCK_C"],
                 BLOCK_S=g["BLOCK_S"], num_warps=g["num_warps"], maxnreg=g["maxnreg"])
    grid = (N * g["n_cblocks"], chunks)
    part = torch.empty(N, chunks, C, dtype=torch.float32, device=x.device)
    _mca_dot_kernel[grid](gy_ptr=grad_y, x_ptr=x, part_ptr=part, n_chunks=chunks, **tiles)
    dgate = part.sum(1)
    # the SE MLP's vjp, fp32: gate = sigmoid(z2), z2 = W2 a1 + b2, a1 = relu(z1), z1 = W1 desc + b1
    z1 = torch.nn.functional.linear(desc, w1.float(), b1.float())
    a1 = torch.relu(z1)
    dz2 = dgate * gate * (1.0 - gate)
    dz1 = (dz2 @ w2.float()) * (z1 > 0)
    ddesc = dz1 @ w1.float()
    if subset is None:
        coef = torch.stack([torch.zeros_like(ddesc), ddesc / S], 1)
    else:
        hit = count > 0
        coef = torch.stack([torch.where(hit, ddesc / count.clamp_min(1), 0.0), torch.where(hit, 0.0, ddesc / S)], 1)
    gx = torch.empty_like(x)
    _mca_scale_kernel[grid](src_ptr=grad_y, dst_ptr=gx, gate_ptr=gate, coef_ptr=coef, params_ptr=subset, ADD=True,
                            **_rule(pool_sizes, x.dim() - 2, subset), **tiles)
    return (gx, (dz1.t() @ desc).to(w1.dtype), dz1.sum(0).to(b1.dtype), (dz2.t() @ a1).to(w2.dtype),
            dz2.sum(0).to(b2.dtype))


register_kernel("mca_pool", _mca_pool_kernel)
register_kernel("mca_scale", _mca_scale_kernel)
register_kernel("mca_dot", _mca_dot_kernel)
