"""Helpers for the model tests: run a model's forward + backward on both dispatch paths and compare."""
from __future__ import annotations

import pytest
import torch

from segfuse.kernels import force_backend, use_triton
from segfuse.testing import assert_verbose_allclose


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, backend: str):
    """Outputs (list) and parameter grads of ``sum((out_i * weight_i))`` on ``backend``."""
    model.zero_grad(set_to_none=True)
    with force_backend(backend):  # backward dispatches when it runs: keep it inside the block too
        out = model(x)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        g = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


def assert_paths_match(model: torch.nn.Module, x: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4):
    """Triton (interpreter on CPU) and reference paths agree on outputs and on every parameter grad."""
    if not use_triton(x.device):
        pytest.skip(f"the Triton path does not run on {x.device} here (CPU needs TRITON_INTERPRET=1)")
    out_t, g_t = fwd_bwd(model, x, "auto")
    out_r, g_r = fwd_bwd(model, x, "reference")
    for i, (a, e) in enumerate(zip(out_t, out_r)):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=f"output[{i}]")
    assert g_t.keys() == g_r.keys()
    for name in g_r:
        assert_verbose_allclose(g_t[name], g_r[name], atol=atol, rtol=rtol, name=f"grad {name}")
