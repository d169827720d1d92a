"""MaskMed's Full-Scale Aware Deformable (FSAD) transformer (3D), and the 3D position helpers it shares
with the mask head.

The paper's FSAD hyper-parameters are not public (design notes, section 5.2: heads, points, levels and
hidden width "NOT FOUND"); the structure follows the abstract ("low-resolution encoder features act as
queries and sample, via deformable attention, from all encoder scales") and Deformable-DETR's encoder
(``fundamentalvision/Deformable-DETR: models/deformable_transformer.py``) with the 3D conventions of
:class:`segfuse.kernels.MultiScaleDeformableAttention` (locations ``(x, y, z) = (W, H, D)``).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from segfuse.kernels import MultiScaleDeformableAttention
from segfuse.kernels.utils import InputShapeError


# ----------------------------------------------------------------------------- 3D position helpers
def voxel_centres(size: Sequence[int], device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised voxel centres of a ``(D, H, W)`` grid: ``(D*H*W, 3)`` in ``(x, y, z) = (W, H, D)``
    order, ``(i + 0.5) / size`` per axis, rows in row-major ``(d, h, w)`` order (as ``flatten(2)``)."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in size]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack((xx, yy, zz), dim=-1).reshape(-1, 3)


def sine_position_embedding_3d(size: Sequence[int], dim: int, temperature: float = 10000.0, device=None,
                               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's normalised sine embedding (``PositionEmbeddingSine(normalize=True)``) for a 3D grid.

    Each axis gets ``F = 2 * ceil(dim / 6)`` channels, interleaved ``sin, cos`` of
    ``2 pi * centre / temperature ** (2 (k // 2) / F)`` (centre = :func:`voxel_centres`), concatenated
    ``x, y, z`` and cut to ``dim``. Returns ``(D*H*W, dim)``; no parameters, no batch axis.
    """
    feats = 2 * math.ceil(dim / 6)
    centres = voxel_centres(size, device=device, dtype=torch.float32) * (2 * math.pi)  # (K, 3)
    k = torch.arange(feats, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / feats)
    pos = centres[:, :, None] / freq  # (K, 3, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(1)[:, :dim].to(dtype)


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, D, H, W)`` -> tokens ``(N, D*H*W, C)`` (row-major voxels)."""
    return x.flatten(2).transpose(1, 2)


def unflatten_tokens(tokens: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Tokens ``(N, D*H*W, C)`` -> ``(N, C, D, H, W)`` (inverse of :func:`flatten_tokens`)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *size)


def check_stage_features(owner: str, features: Sequence[torch.Tensor], in_channels: Sequence[int]) -> None:
    """``features`` must be one ``(N, in_channels[i], D, H, W)`` map per stage (InputShapeError otherwise)."""
    if len(features) != len(in_channels):
        raise InputShapeError(f"{owner}: features must hold {len(in_channels)} maps (one per stage), "
                              f"got {len(features)}")
    for i, (f, c) in enumerate(zip(features, in_channels)):
        if f.dim() != 5 or f.shape[1] != c:
            raise InputShapeError(f"{owner}: features[{i}] must be (N, {c}, D, H, W), got {tuple(f.shape)}")


# ----------------------------------------------------------------------------- encoder layer
class FSADEncoderLayer(nn.Module):
    """Deformable-DETR encoder layer (post-norm) with 3D deformable attention.

    ``x = LN(x + drop(MSDA(x + pos, ref, value)))``; ``x = LN(x + drop(W2 drop(ReLU(W1 x))))``.

    Forward: ``tokens (N, Q, C)``, ``pos (Q, C)`` or ``(N, Q, C)``, ``reference_points (N, Q, 3)``,
    ``value (N, S, C)``, ``spatial_shapes`` (L rows ``(D, H, W)``) -> ``(N, Q, C)``. The deformable attention
    runs in fp32 under autocast too (locations need fp32; the rest of the layer follows autocast).
    """

    def __init__(self, hidden_dim: int, num_levels: int, num_heads: int, num_points: int, ffn_dim: int,
                 dropout: float, deterministic: bool = False):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(3, hidden_dim, num_levels, num_heads, num_points,
                                                  deterministic=deterministic)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, ffn_dim)
        self.activation = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, hidden_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_dim)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                value: torch.Tensor, spatial_shapes: List[Tuple[int, int, int]]) -> torch.Tensor:
        # fp32 even under autocast: sampling locations need fp32 (a half-precision location on a 128^3 level
        # is off by up to half a voxel), and the op takes locations and weights of one dtype
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            attended = self.attn((tokens + pos).float(), reference_points.float(), value.float(), spatial_shapes)
        tokens = self.norm1(tokens + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(tokens))))
        return self.norm2(tokens + self.dropout3(ffn))


# ----------------------------------------------------------------------------- FSAD transformer
class FSADTransformer(nn.Module):
    """Full-Scale Aware Deformable transformer: the coarsest encoder stages, refined by deformable attention
    over every encoder stage (full resolution included).

    Per encoder stage ``l`` (fine -> coarse, widths ``in_channels[l]``) a 1x1x1 conv + GroupNorm to
    ``hidden_dim`` (Deformable-DETR's ``input_proj``) gives the values; the values of all stages are
    concatenated in that order into the memory of :class:`MultiScaleDeformableAttention`
    (``num_levels = len(in_channels)``). The tokens of the ``num_query_stages`` coarsest stages (their
    projections) are the queries, with a learned per-stage level embedding plus a 3D sine position embedding
    added (to the queries only, as Deformable-DETR), and reference points at their own voxel centres
    (normalised ``(x, y, z) = (W, H, D)``, ``(i + 0.5) / size``). The values stay those projections in every
    layer (only the query stages are updated). After ``num_layers`` :class:`FSADEncoderLayer` s a Linear
    projects each refined stage back to its width; these replace the stages' encoder features.

    Defaults (ASSUMPTIONS: the paper's values are not public): hidden 192 (Deformable-DETR/Mask2Former use
    256; 192 keeps the full-resolution value memory of a 128^3 patch at ~1.6 GB per layer in fp32), 8 heads
    and 4 points per level and head (Deformable-DETR, CoTr), FFN 4 x hidden (Deformable-DETR 1024 for 256,
    CoTr 1536 for 384), dropout 0.1, ReLU, 3 layers (Deformable-DETR and CoTr use 6; 3 halves the memory).

    Args:
        in_channels: encoder stage widths, fine -> coarse (the first stage at full resolution).
        hidden_dim: token width C; ``C / num_heads`` must be a multiple of 8 (kernel constraint).
        num_query_stages: how many of the coarsest stages become queries (1 .. ``len(in_channels)``).
        num_layers, num_heads, num_points, ffn_dim, dropout: encoder layers (see above).
        norm_groups: GroupNorm groups of the value projections (Deformable-DETR: 32); divides ``hidden_dim``.
        deterministic: bitwise-reproducible value gradients in the deformable attention kernel.

    Forward: a list of ``len(in_channels)`` maps ``(N, in_channels[l], D_l, H_l, W_l)`` fine -> coarse ->
    the same list with the ``num_query_stages`` coarsest maps replaced by the refined ones (same shapes).

    Example:
        >>> fsad = FSADTransformer((8, 16, 32), hidden_dim=32, num_query_stages=2, num_heads=4, num_points=2)
        >>> feats = [torch.randn(1, 8, 8, 8, 8), torch.randn(1, 16, 4, 4, 4), torch.randn(1, 32, 2, 2, 2)]
        >>> [tuple(f.shape) for f in fsad(feats)] == [tuple(f.shape) for f in feats]
        True
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 192, num_query_stages: int = 3,
                 num_layers: int = 3, num_heads: int = 8, num_points: int = 4, ffn_dim: int = 768,
                 dropout: float = 0.1, norm_groups: int = 32, deterministic: bool = False):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        num_levels = len(in_channels)
        for name, v in (("hidden_dim", hidden_dim), ("num_layers", num_layers), ("ffn_dim", ffn_dim),
                        ("norm_groups", norm_groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"FSADTransformer: {name} must be a positive int, got {v!r}")
        if not isinstance(num_query_stages, int) or not 1 <= num_query_stages <= num_levels:
            raise ValueError(f"FSADTransformer: num_query_stages must be an int in 1..{num_levels} "
                             f"(the number of encoder stages), got {num_query_stages!r}")
        if hidden_dim % norm_groups:
            raise ValueError(f"FSADTransformer: norm_groups={norm_groups} must divide hidden_dim={hidden_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FSADTransformer: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.hidden_dim, self.num_query_stages = in_channels, hidden_dim, num_query_stages
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, hidden_dim, 1), nn.GroupNorm(norm_groups, hidden_dim)) for c in in_channels)
        self.level_embed = nn.Parameter(torch.empty(num_query_stages, hidden_dim))
        self.layers = nn.ModuleList(
            FSADEncoderLayer(hidden_dim, num_levels, num_heads, num_points, ffn_dim, dropout, deterministic)
            for _ in range(num_layers))
        self.output_proj = nn.ModuleList(nn.Linear(hidden_dim, c) for c in in_channels[num_levels - num_query_stages:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR: input projections Xavier-uniform with zero bias, level embedding N(0, 1)."""
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        nn.init.normal_(self.level_embed)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        check_stage_features("FSADTransformer", features, self.in_channels)
        n = features[0].shape[0]
        sizes = [tuple(int(s) for s in f.shape[2:]) for f in features]
        projected = [proj(f) for proj, f in zip(self.input_proj, features)]  # (N, C, D_l, H_l, W_l)
        value = torch.cat([flatten_tokens(p) for p in projected], dim=1)  # (N, S, C)

        first = len(features) - self.num_query_stages
        q_sizes = sizes[first:]
        tokens = torch.cat([flatten_tokens(p) for p in projected[first:]], dim=1)  # (N, Q, C)
        dev, dt = tokens.device, tokens.dtype
        pos = torch.cat([sine_position_embedding_3d(s, self.hidden_dim, device=dev, dtype=dt) + self.level_embed[i]
                         for i, s in enumerate(q_sizes)], dim=0)  # (Q, C)
        ref = torch.cat([voxel_centres(s, device=dev) for s in q_sizes], dim=0)  # fp32
        ref = ref[None].expand(n, -1, -1)  # (N, Q, 3), shared by every level
        for layer in self.layers:
            tokens = layer(tokens, pos, ref, value, sizes)

        counts = [math.prod(s) for s in q_sizes]
        refined = [unflatten_tokens(proj(t), s)
                   for proj, t, s in zip(self.output_proj, tokens.split(counts, dim=1), q_sizes)]
        return list(features[:first]) + refined

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, hidden_dim={self.hidden_dim}, "
                f"num_query_stages={self.num_query_stages}")
