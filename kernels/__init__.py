"""segfuse.kernels: Triton kernels under thin autograd wrappers, each with its eager reference.

Dispatch (one rule for every op): CUDA tensors run Triton; CPU tensors run the eager reference,
unless ``TRITON_INTERPRET=1`` is set before triton is imported, in which case the Triton kernels run
in triton's interpreter. ``force_backend`` overrides the rule in a ``with`` block;
``force_launch_settings("gpu")`` makes interpreted launches use the GPU tile sizes and program counts.
Public helpers for models and losses (argument checks, exception kinds, 2D/3D choices) live in
:mod:`segfuse.kernels.utils`.
"""
from .dispatch import force_backend, force_launch_settings, gpu_launch_settings, interpreter_enabled, use_triton
from .dwconv import MultiKernelDWConv, multi_kernel_dwconv, multi_kernel_dwconv_reference
from .mc_attention import MonteCarloAttention, mc_attention, mc_attention_reference
from .ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn, ms_deform_attn_reference

__all__ = ["force_backend", "force_launch_settings", "gpu_launch_settings", "interpreter_enabled", "use_triton",
           "MultiKernelDWConv", "multi_kernel_dwconv", "multi_kernel_dwconv_reference",
           "MultiScaleDeformableAttention", "ms_deform_attn", "ms_deform_attn_reference",
           "MonteCarloAttention", "mc_attention", "mc_attention_reference"]
