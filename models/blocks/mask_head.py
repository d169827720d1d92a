"""MaskMed's masked multi-scale segmentation head (3D): one set of object queries refined stage by stage,
coarse -> fine, with Mask2Former's masked-attention decoder layers, and a class + mask prediction per stage.

Layers follow ``facebookresearch/Mask2Former: mask2former/modeling/transformer_decoder/
mask2former_transformer_decoder.py`` (post-norm ``CrossAttentionLayer`` -> ``SelfAttentionLayer`` ->
``FFNLayer``, 3-layer ``MLP`` mask embedding, shared ``decoder_norm`` before the prediction heads). MaskMed
specifics (design notes, section 5.2): the query set is shared across decoder stages and each stage
predicts masks at its own resolution, the previous stage's masks being the next stage's attention prior.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels.utils import upsample_to

from .fsad import check_stage_features, flatten_tokens, sine_position_embedding_3d


def masked_attention_mask(mask_logits: torch.Tensor, size: Sequence[int], num_heads: int) -> torch.Tensor:
    """Mask2Former's attention mask from the previous masks: ``(N, Q, *S_prev)`` logits -> bool
    ``(N * num_heads, Q, prod(size))``, True = may not attend.

    The logits are resized (trilinear, ``align_corners=False``) to ``size``; a voxel is blocked where
    ``sigmoid < 0.5``; a query whose row would block everything is unblocked. Not differentiable (detached).
    The batch-major row order ``n * num_heads + h`` is the one ``nn.MultiheadAttention`` reads.
    """
    with torch.no_grad():
        blocked = upsample_to(mask_logits.detach(), size).flatten(2).sigmoid() < 0.5  # (N, Q, K)
        blocked[blocked.all(dim=-1)] = False
        return blocked.repeat_interleave(num_heads, dim=0)


class MLP(nn.Module):
    """Mask2Former's ``MLP``: ``num_layers`` Linear layers with ReLU between them (``(..., in) -> (..., out)``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedAttentionLayer(nn.Module):
    """One Mask2Former decoder layer, post-norm: masked cross-attention -> self-attention -> FFN.

    ``q = LN(q + drop(CrossAttn(q + qpos, memory + mpos, memory, attn_mask)))``;
    ``q = LN(q + drop(SelfAttn(q + qpos, q + qpos, q)))``; ``q = LN(q + drop(W2 drop(ReLU(W1 q))))``.

    Forward: ``queries (N, Q, C)``, ``query_pos (Q, C)``, ``memory (N, K, C)``, ``memory_pos (K, C)``,
    ``attn_mask`` bool ``(N * num_heads, Q, K)`` (True = blocked) -> ``(N, Q, C)``.
    """

    def __init__(self, hidden_dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(hidden_dim)
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, hidden_dim)
        self.norm_ffn = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        for p in self.parameters():  # Mask2Former's _reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        attended = self.cross_attn(queries + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
                                   need_weights=False)[0]
        queries = self.norm_cross(queries + self.dropout(attended))
        q = queries + query_pos
        attended = self.self_attn(q, q, queries, need_weights=False)[0]
        queries = self.norm_self(queries + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(queries))))
        return self.norm_ffn(queries + self.dropout(ffn))


class MaskedMultiScaleHead(nn.Module):
    """Masked multi-scale segmentation head: shared object queries, a class + mask prediction per stage.

    Stages are decoder feature maps, coarse -> fine (the last one at full resolution). Each stage's features
    are projected to ``hidden_dim`` by a 1x1x1 conv (the per-voxel embeddings). A first mask prediction with
    the initial queries on the coarsest stage gives the first attention prior (Mask2Former). Then for each
    stage s: if ``s < cross_attention_stages``, ``layers_per_stage`` :class:`MaskedAttentionLayer` s refine
    the queries, cross-attending to the stage's voxels (keys get a 3D sine position embedding plus a learned
    stage embedding) under the mask prior (the previous stage's masks resized to this stage; between two
    layers of one stage the prior is re-predicted on this stage); then ``decoder_norm`` -> class logits
    (Linear, ``num_classes + 1`` with no-object last) and mask embedding (3-layer MLP), whose dot product
    with the stage's voxel embeddings gives that stage's mask logits. Stages past
    ``cross_attention_stages`` (by default only the full-resolution one, whose token count rules out dense
    attention) predict with the queries of the last refinement.

    Defaults (ASSUMPTIONS, Mask2Former-derived; MaskMed's are not public): hidden 192 (Mask2Former 256;
    192 = the FSAD width, smaller full-resolution embeddings), 8 heads, FFN 8 x hidden (Mask2Former 2048 for
    256), dropout 0, one layer per stage, ``num_queries = num_classes`` (background included; the reviews
    report 1 query per class works best).

    Args:
        in_channels: widths of the stage maps, coarse -> fine.
        num_classes: semantic classes including background (class logits have ``num_classes + 1``).
        num_queries: object queries (default ``num_classes``).
        hidden_dim, num_heads, ffn_dim, dropout: decoder layers (``hidden_dim % num_heads == 0``).
        layers_per_stage: decoder layers per cross-attended stage.
        cross_attention_stages: how many of the coarsest stages refine the queries (1 .. number of stages);
            default all but the finest.

    Forward: a list of stage maps ``(N, in_channels[s], *S_s)`` coarse -> fine -> ``{"class_logits":
    [(N, Q, num_classes + 1)] per stage, "mask_logits": [(N, Q, *S_s)] per stage}``, coarse -> fine.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, num_queries: Optional[int] = None,
                 hidden_dim: int = 192, num_heads: int = 8, ffn_dim: int = 1536, dropout: float = 0.0,
                 layers_per_stage: int = 1, cross_attention_stages: Optional[int] = None):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        num_stages = len(in_channels)
        num_queries = num_classes if num_queries is None else num_queries
        if cross_attention_stages is None:
            cross_attention_stages = max(1, num_stages - 1)
        for name, v in (("num_classes", num_classes), ("num_queries", num_queries), ("hidden_dim", hidden_dim),
                        ("num_heads", num_heads), ("ffn_dim", ffn_dim), ("layers_per_stage", layers_per_stage)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MaskedMultiScaleHead: {name} must be a positive int, got {v!r}")
        if num_stages < 1:
            raise ValueError("MaskedMultiScaleHead: in_channels must name at least one stage")
        if not isinstance(cross_attention_stages, int) or not 1 <= cross_attention_stages <= num_stages:
            raise ValueError(f"MaskedMultiScaleHead: cross_attention_stages must be an int in 1..{num_stages} "
                             f"(the number of head stages), got {cross_attention_stages!r}")
        if hidden_dim % num_heads:
            raise ValueError(f"MaskedMultiScaleHead: hidden_dim={hidden_dim} must be divisible by "
                             f"num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MaskedMultiScaleHead: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.num_classes, self.num_queries = in_channels, num_classes, num_queries
        self.hidden_dim, self.num_heads = hidden_dim, num_heads
        self.cross_attention_stages = cross_attention_stages
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.pixel_proj = nn.ModuleList(nn.Conv3d(c, hidden_dim, 1) for c in in_channels)
        self.stage_embed = nn.Embedding(cross_attention_stages, hidden_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(MaskedAttentionLayer(hidden_dim, num_heads, ffn_dim, dropout)
                          for _ in range(layers_per_stage))
            for _ in range(cross_attention_stages))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3)

    def predict_masks(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(N, Q, *S)`` of ``queries (N, Q, C)`` on voxel embeddings ``pixels (N, C, *S)``."""
        embedding = self.mask_embed(self.decoder_norm(queries))
        return torch.einsum("nqc,nc...->nq...", embedding, pixels)

    def predict(self, queries: torch.Tensor, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(class_logits (N, Q, num_classes + 1), mask_logits (N, Q, *S))``."""
        normed = self.decoder_norm(queries)
        return self.class_embed(normed), torch.einsum("nqc,nc...->nq...", self.mask_embed(normed), pixels)

    def forward(self, features: Sequence[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        check_stage_features("MaskedMultiScaleHead", features, self.in_channels)
        n = features[0].shape[0]
        pixels = [proj(f) for proj, f in zip(self.pixel_proj, features)]  # (N, C, *S_s)
        queries = self.query_feat.weight[None].expand(n, -1, -1)  # (N, Q, C)
        query_pos = self.query_embed.weight  # (Q, C)
        prior = self.predict_masks(queries, pixels[0])  # Mask2Former's prediction with the initial queries
        class_logits, mask_logits = [], []
        for s, pix in enumerate(pixels):
            if s < self.cross_attention_stages:
                size = tuple(pix.shape[2:])
                memory = flatten_tokens(pix)  # (N, K, C)
                memory_pos = sine_position_embedding_3d(size, self.hidden_dim, device=pix.device, dtype=pix.dtype)
                memory_pos = memory_pos + self.stage_embed.weight[s]
                for i, layer in enumerate(self.layers[s]):
                    if i:
                        prior = self.predict_masks(queries, pix)
                    attn_mask = masked_attention_mask(prior, size, self.num_heads)
                    queries = layer(queries, query_pos, memory, memory_pos, attn_mask)
            cls, masks = self.predict(queries, pix)
            class_logits.append(cls)
            mask_logits.append(masks)
            prior = masks
        return {"class_logits": class_logits, "mask_logits": mask_logits}

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, num_queries={self.num_queries}, "
                f"cross_attention_stages={self.cross_attention_stages}")
