"""Multi-kernel depthwise convolution (LGMSNet LMS "grouped", FIAS DMK "summed"), 2D and 3D."""
from .function import MultiKernelDWConvFunction, multi_kernel_dwconv, pack_weights
from .module import MultiKernelDWConv
from .reference import dwconv_packed_reference, multi_kernel_dwconv_reference

__all__ = ["MultiKernelDWConv", "MultiKernelDWConvFunction", "multi_kernel_dwconv", "pack_weights",
           "multi_kernel_dwconv_reference", "dwconv_packed_reference"]
