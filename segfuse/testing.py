"""Test helpers shared by the suite: informative comparisons, NaN-poisoned allocations, and the
device/dtype parametrisation of the two test tiers.

Tiers
-----
* **interpreter** (device ``"cpu"``): the Triton kernels run in triton's interpreter on CPU tensors
  (``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is imported). fp32 and fp16 only:
  the interpreter has no bf16.
* **cuda** (device ``"cuda"``): the compiled kernels on a GPU, fp32/fp16/bf16. These parameters carry
  ``pytest.mark.cuda`` and are skipped with a reason where ``torch.cuda.is_available()`` is false, and
  where ``TRITON_INTERPRET=1`` is set (the kernels would then run in the interpreter, not compiled).
  ``segfuse check-gpu`` runs this tier (``python -m pytest -m cuda`` with ``TRITON_INTERPRET=0``).

Use::

    @pytest.mark.parametrize("device,dtype", device_dtype_params())
    def test_forward(device, dtype):
        atol, rtol = tolerance(dtype)

``DEVICES`` (a list of ``pytest.param``) is built on first access, so ``import segfuse.testing`` works
without pytest installed; ``device_dtype_params`` and ``cuda_marks`` import pytest when called.
"""
from __future__ import annotations

import contextlib
import os

import torch

CUDA_SKIP_REASON = "CUDA tier: needs a GPU (run `segfuse check-gpu` on a CUDA machine)"
CUDA_INTERPRETED_REASON = ("CUDA tier: TRITON_INTERPRET=1 is set, so the kernels would run in triton's interpreter, "
                           "not compiled (run `segfuse check-gpu`, or TRITON_INTERPRET=0 python -m pytest -m cuda)")
INTERPRETER_SKIP_REASON = ("interpreter tier: needs TRITON_INTERPRET=1 set before triton is imported "
                           "(tests/conftest.py sets it unless the environment says otherwise)")

_DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_DEVICE_IDS = {"cpu": "interpreter", "cuda": "cuda"}

#: Default ``(atol, rtol)`` per dtype for comparing a kernel with its fp32-accumulating reference, for
#: values of order 1: an element passes when ``|actual - expected| <= atol + rtol * |expected|``. atol
#: is absolute, so for outputs far from unit magnitude (large sums, losses over many voxels, tiny
#: gradients) scale it with the magnitude: ``tolerance(dtype, scale=expected.abs().max().item())``.
#: fp16 (10-bit mantissa) and bf16 (7-bit mantissa) budgets cover the rounding of inputs and
#: output to the storage dtype plus a few ulps of accumulation-order difference.
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _device_type(device) -> str:
    kind = torch.device(device).type if not isinstance(device, str) or ":" in device else device
    if kind not in _DEVICE_IDS:
        raise ValueError(f"device must be 'cpu' (interpreter tier) or 'cuda', got {device!r}")
    return kind


def dtypes_for(device) -> list:
    """Dtypes a tier tests: ``"cpu"`` (interpreter, no bf16) -> [float32, float16];
    ``"cuda"`` -> [float32, float16, bfloat16]. ``device``: a str or ``torch.device``."""
    if _device_type(device) == "cpu":
        return [torch.float32, torch.float16]
    return [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> tuple:
    """``(atol, rtol)`` for ``dtype`` from :data:`TOLERANCES`; ``atol`` is multiplied by ``scale``
    (the magnitude of the expected values, where it is far from 1)."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no default tolerance for {dtype}; known: {sorted(map(str, TOLERANCES))}")
    atol, rtol = TOLERANCES[dtype]
    return atol * scale, rtol


def cuda_marks() -> list:
    """The marks of a CUDA-tier test: ``pytest.mark.cuda`` and the two skip conditions (no GPU;
    ``TRITON_INTERPRET=1`` set). Evaluated when called (at collection)."""
    import pytest

    return [pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON),
            pytest.mark.skipif(_interpreter_on(), reason=CUDA_INTERPRETED_REASON)]


def _interpreter_marks() -> list:
    import pytest

    return [pytest.mark.skipif(not _interpreter_on(), reason=INTERPRETER_SKIP_REASON)]


def _marks_for(device: str) -> list:
    return cuda_marks() if device == "cuda" else _interpreter_marks()


def _build_devices() -> list:
    import pytest

    return [pytest.param(d, id=_DEVICE_IDS[d], marks=_marks_for(d)) for d in ("cpu", "cuda")]


def device_dtype_params() -> list:
    """``pytest.param(device, dtype)`` for every tier and its dtypes, ids ``"interpreter-fp32"``,
    ``"interpreter-fp16"``, ``"cuda-fp32"``, ``"cuda-fp16"``, ``"cuda-bf16"``; the cuda ones carry
    :func:`cuda_marks`. Use with ``@pytest.mark.parametrize("device,dtype", device_dtype_params())``."""
    import pytest

    return [pytest.param(d, dt, id=f"{_DEVICE_IDS[d]}-{_DTYPE_IDS[dt]}", marks=_marks_for(d))
            for d in ("cpu", "cuda") for dt in dtypes_for(d)]


def __getattr__(name: str):
    # DEVICES is built on first access (PEP 562), so importing this module does not need pytest.
    if name == "DEVICES":
        value = _build_devices()
        globals()["DEVICES"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, name: str = "tensor") -> None:
    """Assert ``a`` and ``b`` have the same shape, dtype and bits (NaN payloads and the sign of zero
    included), e.g. for run-to-run determinism. On failure the message gives the number of differing
    elements, the max abs difference and the first differing index with both values and their bits."""
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise AssertionError(f"{name}: dtype {a.dtype} != {b.dtype}")
    x, y = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    if x.is_complex():
        x, y = torch.view_as_real(x), torch.view_as_real(y)
    if x.dtype == torch.bool:
        bx, by = x.view(torch.uint8), y.view(torch.uint8)
    elif x.is_floating_point():
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        bx, by = x.view(as_int), y.view(as_int)
    else:
        bx, by = x, y
    bad = bx != by
    if not bad.any():
        return
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    width = 2 * x.element_size()
    bits = lambda t: f"0x{int(t[idx].item()) & ((1 << (4 * width)) - 1):0{width}x}"  # noqa: E731
    diff = (x.double() - y.double()).abs()
    finite = torch.isfinite(diff)
    max_abs = f"{diff[finite].max().item():.3e}" if finite.any() else "nan"
    raise AssertionError(
        f"{name}: not bitwise equal: {int(bad.sum())}/{bad.numel()} elements differ (dtype {x.dtype}, shape "
        f"{tuple(x.shape)}); max abs diff {max_abs}; first at index {idx}: {x[idx].item()!r} ({bits(bx)}) vs "
        f"{y[idx].item()!r} ({bits(by)})")


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


def exception_on_backend(backend: str, call) -> tuple:
    """``(exception type, message)`` that ``call()`` raises under ``force_backend(backend)`` (global
    seed 0 first, so both backends see the same random inputs), or ``(None, None)`` if it raises nothing."""
    from segfuse.kernels import force_backend

    torch.manual_seed(0)
    with force_backend(backend):
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
            return type(e), str(e)
    return None, None
