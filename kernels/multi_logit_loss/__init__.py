"""Fused softplus-weighted multi-logit Dice + CE loss with LoMix logit mixing, 2D and 3D."""
from .function import MultiLogitDiceCEFunction, multi_logit_dice_ce
from .reference import (OPS, WEIGHT_MODES, attn_rows, concat_rows, map_names, mix_maps,
                        multi_logit_dice_ce_reference, num_supervised_maps, subsets)

__all__ = ["multi_logit_dice_ce", "multi_logit_dice_ce_reference", "MultiLogitDiceCEFunction", "mix_maps",
           "map_names", "subsets", "num_supervised_maps", "concat_rows", "attn_rows", "OPS", "WEIGHT_MODES"]
