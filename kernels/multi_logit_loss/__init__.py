"""Fused softplus-weighted multi-logit Dice + CE loss with LoMix logit mixing, 2D and 3D.

Files by role: ``reference.py`` (eager semantics, the CPU path and oracle), ``layout.py`` (the flat
buffers passed between kernels), ``mixing.py`` (the mixing operators inside the kernels), ``triton.py``
(kernels + launchers), ``specs.py`` (the launch cases the tests and the compile check use),
``function.py`` (functional API, input guard, autograd Function, registered ops).
"""
from .function import MultiLogitDiceCEFunction, multi_logit_dice_ce
from .reference import (LOMIX_OPS, OPS, WEIGHT_MODES, attn_rows, concat_rows, map_names, mix_maps,
                        multi_logit_dice_ce_reference, num_supervised_maps, subsets, transform_weights)

__all__ = ["multi_logit_dice_ce", "multi_logit_dice_ce_reference", "MultiLogitDiceCEFunction", "mix_maps",
           "map_names", "subsets", "num_supervised_maps", "concat_rows", "attn_rows", "transform_weights", "OPS", "LOMIX_OPS",
           "WEIGHT_MODES"]
