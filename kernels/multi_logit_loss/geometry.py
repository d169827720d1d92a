"""Launch geometry of the fused loss at mixed resolutions: per-map scale factors, the voxel tiles, the
programs' boxes, and the host-side copy of the source-index rule the kernels use.

Every map ``i`` is ``(B, C, *S_i)`` with ``S_i = S / s_i`` for an integer factor ``s_i`` per axis of the
label size ``S`` (2D maps are handled as ``D = 1``). The kernels read map ``i`` at its own resolution
and upsample it in registers; pass 2 writes its gradient at its own resolution.

Source-index rule (one definition, used by the kernels, the gather kernel and this file): along an axis
with factor ``s`` and ``n`` coarse cells, fine coordinate ``c`` reads cells ``i0 = max(2c + 1 - s, 0) //
(2 s)`` and ``i1 = min(i0 + 1, n - 1)`` with weight ``lam`` on ``i1`` (``F.interpolate(mode="bilinear"/
"trilinear", align_corners=False)``: source coordinate ``max((c + 0.5) / s - 0.5, 0)``; the integer form
of its floor is exact). Nearest: ``i0 = i1 = c // s`` (``F.interpolate(mode="nearest")`` for integer
factors). Factor 1: ``i0 = i1 = c``.

Tiles and boxes: a tile is a ``(TZ, TY, TX)`` box of fine voxels (powers of two; ``TZ = 1`` in 2D). Each
program of pass 1 / pass 2 owns a box of ``(box_z, box_y, box_x)`` tiles of one sample and walks it in
raster order. In the interpreter one box covers the whole sample (the interpreter pays per operation,
not per program, so it also gets larger tiles); on a GPU there are about 4 programs per SM, and a box
is never shorter than the largest factor of an axis (so a coarse cell is touched by at most a few
boxes along each axis, which bounds the gather kernel's loop).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence, Tuple

UPSAMPLE_MODES = ("linear", "nearest")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def source_cells(c: int, n: int, s: int, nearest: bool) -> Tuple[int, int]:
    """``(i0, i1)``: the coarse cells fine coordinate ``c`` reads (the kernels' rule, see the module doc)."""
    if s == 1:
        return c, c
    if nearest:
        return c // s, c // s
    i0 = max(2 * c + 1 - s, 0) // (2 * s)
    return i0, min(i0 + 1, n - 1)


def scale_factors(map_size: Sequence[int], size: Sequence[int]) -> Tuple[int, int, int]:
    """``(sz, sy, sx)`` of a map of spatial size ``map_size`` against labels of size ``size`` (2D: sz = 1)."""
    f = tuple(n // m for n, m in zip(size, map_size))
    return (1,) * (3 - len(f)) + f


def tile_shape(block: int, size3: Sequence[int]) -> Tuple[int, int, int]:
    """``(TZ, TY, TX)``: ``block`` voxels (a power of two; fewer when the volume is smaller) as a box of powers of
    two, each axis at most the next power of two of its extent: the fewest tiles over the volume, with a 10%
    penalty per factor 2 of elongation (coarse maps' gradients are reduced per tile: a cube-like tile touches
    fewer cells at its edges), then the most cube-like."""
    caps = [_next_pow2(n) for n in size3]  # z, y, x
    bits = min(block.bit_length() - 1, sum(c.bit_length() - 1 for c in caps))
    best = None
    for bz in range(caps[0].bit_length()):
        for by in range(caps[1].bit_length()):
            bx = bits - bz - by
            if bx < 0 or (1 << bx) > caps[2]:
                continue
            t = (1 << bz, 1 << by, 1 << bx)
            tiles = math.prod(-(-n // k) for n, k in zip(size3, t))
            used = [k for k, c in zip(t, caps) if c > 1]
            aspect = max(used) // min(used) if used else 1
            key = (tiles * (1.0 + 0.1 * math.log2(aspect)), aspect, -t[2])
            if best is None or key < best[0]:
                best = (key, t)
    return best[1]


def cells_per_tile(t: int, s: int) -> int:
    """Coarse cells along one axis a tile of ``t`` fine voxels can touch (a power of two; the register tile
    of pass 2's reduction): ``t`` for factor 1, else ``ceil((t - 1) / s) + 2`` rounded up (``i0`` takes at most
    ``ceil((t - 1) / s) + 1`` values over ``t`` consecutive coordinates, ``i1`` adds one)."""
    return t if s == 1 else _next_pow2((t + s - 2) // s + 2)


def slab_extent(n: int, length: int, s: int) -> int:
    """Coarse cells along one axis a box of ``length`` fine voxels can touch (the slab extent; the kernels
    use the same formula): ``min(n, ceil((length - 1) / s) + 2)``; the whole axis when the box covers it."""
    return min(n, (length + s - 2) // s + 2)


@functools.lru_cache(maxsize=256)
def gather_radius(N: int, s: int, length: int, nearest: bool) -> int:
    """Candidate boxes the gather kernel visits along one axis for each coarse cell ``j``, starting at box
    ``max(j s - s, 0) // length``: the most boxes that touch one cell (checked by brute force here)."""
    n = N // s
    n_box = -(-N // length)
    spans = []
    for t in range(n_box):
        a, e = t * length, min((t + 1) * length, N) - 1
        spans.append((source_cells(a, n, s, nearest)[0], source_cells(e, n, s, nearest)[1]))
    radius = 1
    for j in range(n):
        touching = [t for t, (lo, hi) in enumerate(spans) if lo <= j <= hi]
        start = max(j * s - s, 0) // length
        assert touching and touching[0] >= start, (N, s, length, j)
        radius = max(radius, touching[-1] - start + 1)
    return radius


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Everything a launch of the fused loss needs to know about sizes (see the module doc)."""
    size3: Tuple[int, int, int]           # (D, H, W) of the labels (D = 1 in 2D)
    scales: Tuple[Tuple[int, int, int], ...]  # per map (sz, sy, sx)
    tile: Tuple[int, int, int]            # (TZ, TY, TX)
    box: Tuple[int, int, int]             # tiles per box along (z, y, x)
    n_box: Tuple[int, int, int]           # boxes per sample along (z, y, x)
    nearest: bool

    @property
    def block(self) -> int:
        return self.tile[0] * self.tile[1] * self.tile[2]

    @property
    def boxes(self) -> int:
        return self.n_box[0] * self.n_box[1] * self.n_box[2]

    @property
    def voxels(self) -> int:
        return self.size3[0] * self.size3[1] * self.size3[2]

    def coarse(self, i: int) -> bool:
        return self.scales[i] != (1, 1, 1)

    @property
    def any_coarse(self) -> bool:
        return any(self.coarse(i) for i in range(len(self.scales)))

    def map_size3(self, i: int) -> Tuple[int, int, int]:
        return tuple(n // s for n, s in zip(self.size3, self.scales[i]))

    def box_length(self) -> Tuple[int, int, int]:
        return tuple(b * t for b, t in zip(self.box, self.tile))

    def slab_shape(self, i: int, B: int, C: int) -> Tuple[int, ...]:
        """``(B * boxes, C, ez, ey, ex)``: pass 2's fp32 partial sums of coarse map ``i``, one slab per program
        (with one box per sample it is the gradient's own layout)."""
        ext = tuple(slab_extent(n, L, s) for n, L, s in zip(self.map_size3(i), self.box_length(), self.scales[i]))
        return (B * self.boxes, C) + ext

    def cells_per_tile(self, i: int) -> Tuple[int, int, int]:
        return tuple(cells_per_tile(t, s) for t, s in zip(self.tile, self.scales[i]))

    def reduce_products(self, c_pad: int) -> int:
        """The largest broadcast product of pass 2's per-tile reduction to coarse cells (x step, y step, z step),
        over the coarse maps: above a limit the kernel uses matrix products instead (interpreter-size tiles)."""
        tz, ty, tx = self.tile
        most = 0
        for i in range(len(self.scales)):
            if self.coarse(i):
                ncz, ncy, ncx = self.cells_per_tile(i)
                most = max(most, c_pad * tz * ty * tx * ncx, c_pad * tz * ty * ncy * ncx, c_pad * tz * ncz * ncy * ncx)
        return most

    def gather_radius(self, i: int) -> Tuple[int, int, int]:
        return tuple(gather_radius(N, s, L, self.nearest) for N, s, L in zip(self.size3, self.scales[i], self.box_length()))


def make_geometry(map_sizes: Sequence[Sequence[int]], size: Sequence[int], block: int, programs: int,
                  nearest: bool) -> Geometry:
    """The geometry of one launch: ``block`` voxels per tile, about ``programs`` boxes per sample (1: one box
    covers the sample); a box is never shorter than the largest factor of an axis (or the axis)."""
    size3 = (1,) * (3 - len(size)) + tuple(int(n) for n in size)
    scales = tuple(scale_factors(m, size) for m in map_sizes)
    tile = tile_shape(block, size3)
    n_t = tuple(-(-n // t) for n, t in zip(size3, tile))
    box = list(n_t)
    min_len = [max(1, -(-min(max(sc[ax] for sc in scales), size3[ax]) // tile[ax])) for ax in range(3)]

    def count(bx):
        return (-(-n_t[0] // bx[0])) * (-(-n_t[1] // bx[1])) * (-(-n_t[2] // bx[2]))

    while count(box) < programs:
        # halve the box along the axis where it is longest in voxels, if it stays at least min_len tiles
        order = sorted(range(3), key=lambda ax: -box[ax] * tile[ax])
        for ax in order:
            half = -(-box[ax] // 2)
            if box[ax] > 1 and half >= min_len[ax]:
                box[ax] = half
                break
        else:
            break
    n_box = tuple(-(-n // b) for n, b in zip(n_t, box))
    return Geometry(size3=size3, scales=scales, tile=tile, box=tuple(box), n_box=n_box, nearest=bool(nearest))
