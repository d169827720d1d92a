"""Monte-Carlo attention (SvANet ``MoCAttention`` channel gate; FIAS-scaffold spatial variant), 2D and 3D."""
from .function import MonteCarloAttentionFunction, draw_subset, mc_attention, mc_spatial_attention
from .module import MonteCarloAttention, hidden_channels, make_divisible
from .reference import (mc_attention_reference, mc_attention_svanet, mc_spatial_attention_reference,
                        member_mask)

__all__ = ["MonteCarloAttention", "MonteCarloAttentionFunction", "mc_attention", "mc_spatial_attention",
           "draw_subset", "mc_attention_reference", "mc_attention_svanet", "mc_spatial_attention_reference",
           "member_mask", "make_divisible", "hidden_channels"]
