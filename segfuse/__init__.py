"""segfuse: fused Triton kernels, models and losses for medical image segmentation.

Subpackages: ``segfuse.kernels`` (ops), ``segfuse.losses``, ``segfuse.models``, ``segfuse.bench``.
"""
__version__ = "0.1.0"
