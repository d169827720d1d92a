"""segfuse.losses: thin modules over the fused loss kernels (``segfuse.kernels.multi_logit_loss``)."""
from .dice_ce import BCEDiceLoss, DeepSupervisionDiceCE, DiceCELoss
from .lomix import LoMixLoss

__all__ = ["LoMixLoss", "DiceCELoss", "BCEDiceLoss", "DeepSupervisionDiceCE"]
