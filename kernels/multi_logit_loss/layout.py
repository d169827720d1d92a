"""The flat fp32 buffers the fused loss passes between its kernels, the launchers, the fake
implementations and the backward: each layout is defined here once.

Sizes: ``M`` base logit maps, ``C`` classes, ``T`` supervised maps (base + mutants).

* :class:`PartialRow`: one row per pass-1 program, ``part[B * n_chunks, width]``::

      [ I (C x T) | P (C x T) | G (C) | CE (T) | BAD (M + 1) | N (1) ]

  ``I[c, t] = sum p g`` (soft-label Dice: ``sum (|p| + |g| - |p - g|) / 2``), ``P[c, t] = sum p^2`` (or
  ``sum p``, ``sum |p|``), ``G[c]`` the target sums (``sum g``, ``sum g^2``), ``CE[t]`` summed per-voxel CE,
  ``BAD[i]`` NaN/Inf count of map ``i`` and ``BAD[M]`` the out-of-range label count, ``N`` the CE
  denominator's share of the row (voxels not ``ignore_index``, or with class weights the sum of their labels'
  weights; written only when the launch counts it).
* :class:`ResultVector`: ``res[size]``, written by the finalize kernel (or the reference)::

      [ loss | per_map (T) | ce (T) | dice (T) | dw (T) | ce_scale (T) | bad (M + 1) ]

  ``dw[t]`` is ``d loss / d raw_weight[t]`` before the upstream gradient; ``ce_scale[t]`` is the CE
  chain factor ``w_t * ce_weight / n_ce`` pass 2 reads (``n_ce``: the voxels that count, times C for sigmoid;
  at least 1).
* :class:`ParamGradLayout`: the flat parameter gradient ``[concat_weight | concat_bias | attn_weight |
  attn_bias]`` (shapes in :mod:`.reference`), one row per pass-2 program before the launcher's sum.
* ``coef[B or 1, planes, T, C]`` (:func:`coef_shape`): the Dice chain coefficients (plane 0 ``A`` multiplies
  ``dI/dp``, plane 1 ``Bq`` multiplies ``dP/dp``) and, with ``reduction="none"``, plane 2: the weighted
  per-class Dice terms (the op's per-class output).

The kernels take every offset as a ``tl.constexpr`` from :meth:`constexprs`.
"""
from __future__ import annotations

import dataclasses

from .reference import attn_rows, concat_rows, subsets


def coef_planes(reduction: str) -> int:
    return 3 if reduction == "none" else 2


def coef_shape(B: int, T: int, C: int, batch: bool, reduction: str) -> tuple:
    """``coef``'s shape: one row per sample (per-sample Dice) or one (``batch``)."""
    return (1 if batch else B, coef_planes(reduction), T, C)


@dataclasses.dataclass(frozen=True)
class PartialRow:
    C: int
    T: int
    M: int

    @property
    def i(self) -> int:
        return 0

    @property
    def p(self) -> int:
        return self.C * self.T

    @property
    def g(self) -> int:
        return 2 * self.C * self.T

    @property
    def ce(self) -> int:
        return self.g + self.C

    @property
    def bad(self) -> int:
        return self.ce + self.T

    @property
    def n(self) -> int:
        return self.bad + self.M + 1

    @property
    def width(self) -> int:
        return self.n + 1

    def constexprs(self) -> dict:
        return dict(PART_W=self.width, PART_I=self.i, PART_P=self.p, PART_G=self.g, PART_CE=self.ce,
                    PART_BAD=self.bad, PART_N=self.n)


@dataclasses.dataclass(frozen=True)
class ResultVector:
    T: int
    M: int

    loss: int = 0

    @property
    def per_map(self) -> int:
        return 1

    @property
    def ce(self) -> int:
        return 1 + self.T

    @property
    def dice(self) -> int:
        return 1 + 2 * self.T

    @property
    def dw(self) -> int:
        return 1 + 3 * self.T

    @property
    def ce_scale(self) -> int:
        return 1 + 4 * self.T

    @property
    def bad(self) -> int:
        return 1 + 5 * self.T

    @property
    def size(self) -> int:
        return self.bad + self.M + 1

    def field(self, res, name: str):
        """The slice of ``res`` holding ``name`` ("per_map", "ce", "dice", "dw", "ce_scale", "bad")."""
        start = getattr(self, name)
        return res[start:start + (self.M + 1 if name == "bad" else self.T)]

    def constexprs(self) -> dict:
        return dict(RES_PER_MAP=self.per_map, RES_CE=self.ce, RES_DICE=self.dice, RES_DW=self.dw,
                    RES_CE_SCALE=self.ce_scale, RES_BAD=self.bad)


@dataclasses.dataclass(frozen=True)
class ParamGradLayout:
    M: int
    C: int

    @property
    def cw(self) -> int:
        return 0

    @property
    def cb(self) -> int:
        return concat_rows(self.M) * self.C * self.C

    @property
    def aw(self) -> int:
        return self.cb + len(subsets(self.M)) * self.C

    @property
    def ab(self) -> int:
        return self.aw + attn_rows(self.M) * self.C

    @property
    def size(self) -> int:
        return self.ab + attn_rows(self.M)

    def split(self, flat):
        """``(concat_weight, concat_bias, attn_weight, attn_bias)`` views of a flat gradient."""
        C = self.C
        return (flat[self.cw:self.cb].view(-1, C, C), flat[self.cb:self.aw].view(-1, C),
                flat[self.aw:self.ab].view(-1, C), flat[self.ab:self.size])

    def constexprs(self) -> dict:
        return dict(PG_CB=self.cb, PG_AW=self.aw, PG_AB=self.ab, PG_SIZE=self.size)
