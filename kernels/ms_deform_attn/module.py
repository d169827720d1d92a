"""``MultiScaleDeformableAttention``: Deformable-DETR's ``MSDeformAttn`` module, 2D and 3D."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..utils import check_spatial_dims
from .function import _int_rows, ms_deform_attn


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Deformable-DETR ``MSDeformAttn``; 3D as CoTr / MaskMed FSAD).

    Args:
        spatial_dims: 2 (levels ``(H, W)``, locations ``(x, y)``) or 3 (levels ``(D, H, W)``, locations
            ``(x, y, z)`` = ``(W, H, D)``).
        embed_dim: C, a multiple of ``num_heads`` with head dim ``C / num_heads`` a multiple of 8 (<= 256).
        num_levels: L. num_heads: M. num_points: P per level and head (any P >= 1).
        deterministic: bitwise-reproducible value gradient (see :func:`ms_deform_attn`).
        fused_softmax: pass the attention logits to the op and let the kernels do the softmax over
            levels x points (forward and backward, one pass saved); False: ``torch.softmax`` first.

    Layers: ``sampling_offsets`` Linear C -> M L P d, ``attention_weights`` Linear C -> M L P,
    ``value_proj`` and ``output_proj`` Linear C -> C. Initialisation as Deformable-DETR: offset weight 0,
    offset bias = per head h the direction ``(cos t, sin t)`` (3D: CoTr's ``(cos t, sin t cos t,
    sin t sin t)``), ``t = 2 pi h / M``, divided by its max-abs component and multiplied by ``p + 1`` for
    point p (same for every level); attention weight and bias 0 (uniform softmax); value / output
    projections Xavier-uniform with zero bias.

    Forward: ``query (N, Q, C)``, ``reference_points (N, Q, L, d)`` (or ``(N, Q, d)``, shared by all
    levels) in [0, 1], ``input_flatten (N, S, C)``, ``spatial_shapes`` (list of tuples or integer
    tensor), ``level_start_index`` (optional), ``input_padding_mask (N, S)`` bool (True = padding, the
    value is zeroed there). Sampling location = reference point + offset / (W_l, H_l[, D_l]); the
    attention logits are softmaxed jointly over levels x points per head. Returns ``(N, Q, C)``.

    Example:
        >>> attn = MultiScaleDeformableAttention(3, 64, num_levels=2, num_heads=8, num_points=4)
        >>> shapes = [(4, 4, 4), (2, 2, 2)]
        >>> x = torch.randn(1, 72, 64)
        >>> ref = torch.rand(1, 10, 2, 3)
        >>> attn(torch.randn(1, 10, 64), ref, x, shapes).shape
        torch.Size([1, 10, 64])
    """

    def __init__(self, spatial_dims: int, embed_dim: int = 256, num_levels: int = 4, num_heads: int = 8,
                 num_points: int = 4, deterministic: bool = False, fused_softmax: bool = True):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, v in (("embed_dim", embed_dim), ("num_levels", num_levels), ("num_heads", num_heads),
                        ("num_points", num_points)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        head_dim = embed_dim // num_heads
        if head_dim % 8 or head_dim > 256:
            raise ValueError(f"embed_dim / num_heads = {head_dim} must be a multiple of 8, at most 256")
        self.embed_dim, self.num_levels, self.num_heads, self.num_points = embed_dim, num_levels, num_heads, num_points
        self.deterministic = bool(deterministic)
        self.fused_softmax = bool(fused_softmax)
        d = self.spatial_dims
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * d)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        M, L, P, d = self.num_heads, self.num_levels, self.num_points, self.spatial_dims
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        if d == 2:
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        else:
            grid = torch.stack([thetas.cos(), thetas.sin() * thetas.cos(), thetas.sin() * thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(M, 1, 1, d).repeat(1, L, P, 1)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes, level_start_index=None,
                input_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        N, Q, C = query.shape
        S = input_flatten.shape[1]
        M, L, P, d = self.num_heads, self.num_levels, self.num_points, self.spatial_dims
        rows = _int_rows("spatial_shapes", spatial_shapes)
        if len(rows) != L or any(not isinstance(r, list) or len(r) != d for r in rows):
            raise ValueError(f"spatial_shapes must hold num_levels={L} rows of {d} ints for spatial_dims={d}, "
                             f"got {rows!r}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, C // M)
        offsets = self.sampling_offsets(query).view(N, Q, M, L, P, d)
        logits = self.attention_weights(query).view(N, Q, M, L, P)
        weights = logits if self.fused_softmax else logits.view(N, Q, M, L * P).softmax(-1).view(N, Q, M, L, P)
        # per-level normaliser (W, H[, D]): the rows are (H, W) / (D, H, W), so reversed; Python ints -> constant
        normalizer = torch.tensor([list(reversed(r)) for r in rows], dtype=offsets.dtype, device=offsets.device)
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None, :].expand(N, Q, L, d)
        if reference_points.shape[-1] != d:
            raise ValueError(f"reference_points last dim must be {d} for spatial_dims={d}, "
                             f"got shape {tuple(reference_points.shape)}")
        loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        # locations and weights in fp32 whatever autocast made of the projections (the op takes them in one
        # dtype, and a half-precision location on a 128^3 level is off by up to half a voxel)
        loc, weights = loc.float(), weights.float()
        out = ms_deform_attn(value, [tuple(r) for r in rows], level_start_index, loc, weights,
                             deterministic=self.deterministic, softmax=self.fused_softmax)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"spatial_dims={self.spatial_dims}, embed_dim={self.embed_dim}, num_levels={self.num_levels}, "
                f"num_heads={self.num_heads}, num_points={self.num_points}, deterministic={self.deterministic}, "
                f"fused_softmax={self.fused_softmax}")
