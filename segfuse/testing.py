"""Test helpers shared by the suite: informative comparisons and NaN-poisoned allocations."""
from __future__ import annotations

import contextlib

import torch


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                            name: str = "tensor") -> None:
    """Like ``torch.testing.assert_close`` but reports max abs/rel error, mismatches and NaN/Inf counts."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    diff = (a - e).abs()
    bad = (diff > atol + rtol * e.abs()) | (nan_a != nan_e) | (inf_a != inf_e)
    if bad.any():
        finite = ~(nan_a | nan_e | inf_a | inf_e)
        max_abs = diff[finite].max().item() if finite.any() else float("nan")
        rel = (diff / e.abs().clamp_min(1e-12))[finite]
        max_rel = rel.max().item() if rel.numel() else float("nan")
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (atol={atol}, rtol={rtol}); "
            f"max abs err {max_abs:.3e}, max rel err {max_rel:.3e}; NaN in actual {int(nan_a.sum())} vs "
            f"expected {int(nan_e.sum())}, Inf {int(inf_a.sum())} vs {int(inf_e.sum())}; "
            f"first bad index {idx}: {a[idx].item()} vs {e[idx].item()}")


@contextlib.contextmanager
def nan_poisoned_allocations():
    """Make ``torch.empty``-style allocations of floating tensors return NaN-filled memory.

    A kernel that leaves part of its output unwritten then fails its parity test loudly.
    """
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}
    new_empty = torch.Tensor.new_empty

    def poison(t):
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            t.fill_(float("nan"))
        return t

    def wrap(fn):
        def inner(*args, **kwargs):
            return poison(fn(*args, **kwargs))
        return inner

    try:
        for name, fn in originals.items():
            setattr(torch, name, wrap(fn))
        torch.Tensor.new_empty = wrap(new_empty)
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        torch.Tensor.new_empty = new_empty
