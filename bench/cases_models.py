"""Whole-network bench case: one LGMSNet-2D training step (forward, loss, backward).

Fused path: the model's LMS depthwise convs run the Triton kernel (interpreter on CPU), everything
else is ordinary aten. Eager path: the same model with every op on eager PyTorch (the reference
dwconv is the user-level split -> 4 convs -> cat). Both are counted the same way as the op rows:
Triton kernels by the interpreter hook, aten ops by the dispatch counter. The optimizer step is
the same for both and is left out.

Reduced size for the interpreter: one 128x128 image instead of eight 256x256; activation traffic
scales with N*H*W (x32), weight traffic (2.3M parameters, ~9 MB per pass) does not, so the scaled
figures slightly overstate the weight part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cases import BenchCase, Problem, register_case


def _lgmsnet_step(scale, device, dtype):
    from segfuse.kernels import force_backend
    from segfuse.models import create_model

    n_full, hw_full = 8, 256
    n, hw = (n_full, hw_full) if scale >= 1 else (1, 128)
    torch.manual_seed(0)
    model = create_model("lgmsnet", spatial_dims=2, in_channels=3, num_classes=1).to(device=device, dtype=dtype)
    model.train()
    x = torch.randn(n, 3, hw, hw, device=device, dtype=dtype)
    y = (torch.rand(n, 1, hw, hw, device=device) > 0.5).to(dtype)

    def clear():
        for p in model.parameters():
            p.grad = None

    def fwd():
        clear()
        return F.binary_cross_entropy_with_logits(model(x), y)

    def bwd(loss):
        loss.backward()

    def eager_fwd():
        with force_backend("reference"):
            return fwd()

    nbytes = x.numel() * x.element_size()
    return Problem(fused_fwd=fwd, fused_bwd=bwd, eager_fwd=eager_fwd, eager_bwd=bwd,
                   min_bytes_fwd=nbytes, min_bytes_bwd=nbytes,
                   scale_to_full=(n_full * hw_full ** 2) / (n * hw ** 2), size=f"{n}x3x{hw}x{hw}",
                   notes="whole step (forward, BCE loss, backward); no analytic floor for a network: compare "
                         "the fused column with eager", has_floor=False)


register_case(BenchCase(name="LGMSNet-2D train step", paper_size="B=8 3x256x256, 1 class, BCE",
                        build=_lgmsnet_step, interp_scale=0.0))
