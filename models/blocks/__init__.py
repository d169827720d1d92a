"""Building blocks of the segfuse models (2D and 3D)."""
from .common import ConvNormAct, channel_shuffle, get_act, get_norm, resize_logits
from .emcad import CAB, EUCB, LGAG, MSCB, SAB, EMCADDecoder
from .gms import GMSBlock, Transformer
from .lms import LMSBlock

__all__ = ["ConvNormAct", "channel_shuffle", "get_act", "get_norm", "resize_logits", "CAB", "SAB", "MSCB",
           "EUCB", "LGAG", "EMCADDecoder", "GMSBlock", "Transformer", "LMSBlock"]
