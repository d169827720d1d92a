"""segfuse.models: every segmentation network of segfuse (on the segfuse kernels, and the plain U-Net baseline).

``create_model(name, spatial_dims, in_channels, num_classes, deep_supervision=False, **kw)`` builds
a registered model; ``list_models()`` names them. Every model returns logits at input resolution
(one tensor) at inference, and in training mode with ``deep_supervision=True`` a list of
native-resolution logits, coarse -> fine, whose strides are ``model.output_strides``
(:func:`resize_logits` brings them to the input grid). Every model has ``size_multiple``: the input
sizes it accepts (or pads to) are multiples of it.
"""
from .blocks.common import resize_logits
from .emcad_pvt import EMCADPVT
from .fias import FIAS
from .lgmsnet import LGMSNet
from .maskmed import MaskMed
from .registry import create_model, list_models, register_model
from .unet import UNet

__all__ = ["create_model", "list_models", "register_model", "resize_logits", "LGMSNet", "EMCADPVT", "FIAS", "MaskMed",
           "UNet"]
