"""segfuse.losses: thin modules over the fused loss kernels (``segfuse.kernels.multi_logit_loss``)."""
from .dice_ce import BCEDiceLoss, DeepSupervisionDiceCE, DiceCELoss, DiceLoss
from .fias import FIASLoss
from .lomix import LoMixLoss
from .set_criterion import HungarianMatcher, MaskMedCriterion, semantic_targets

__all__ = ["LoMixLoss", "DiceCELoss", "DiceLoss", "BCEDiceLoss", "DeepSupervisionDiceCE", "FIASLoss",
           "MaskMedCriterion", "HungarianMatcher", "semantic_targets"]
