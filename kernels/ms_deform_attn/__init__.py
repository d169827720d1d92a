"""Multi-scale deformable attention (Deformable-DETR ``MSDeformAttn``), 2D bilinear and 3D trilinear."""
from .function import MSDeformAttnFunction, ms_deform_attn
from .module import MultiScaleDeformableAttention
from .reference import ms_deform_attn_reference

__all__ = ["MultiScaleDeformableAttention", "MSDeformAttnFunction", "ms_deform_attn", "ms_deform_attn_reference"]
