"""Every ``@triton.jit`` kernel of the package, with the specialisations the compile test builds.

A kernel file registers each kernel once with :func:`register_kernel`; the ahead-of-time compile
test (``tests/kernels/test_compile.py``) walks :func:`all_kernels` after importing every op family in
:data:`OP_MODULES`, so a new kernel cannot be forgotten: a ``@triton.jit`` function found in those
modules but never registered fails the test.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List

# modules that define Triton kernels; the compile test imports each of them
OP_MODULES: List[str] = ["segfuse.kernels.dwconv.triton", "segfuse.kernels.multi_logit_loss.triton"]


@dataclasses.dataclass
class KernelSpec:
    """How to build one kernel ahead of time.

    ``specs(dtype)`` returns a list of ``(signature, constexprs, num_warps)``: ``signature`` maps each
    runtime argument to a triton type string ("*fp32", "i32", ...), ``constexprs`` maps the
    constexpr arguments to values. ``dtypes`` are the activation dtypes the kernel supports.
    """
    name: str
    fn: object
    specs: Callable[[str], list]
    dtypes: tuple = ("fp32", "fp16", "bf16")


_KERNELS: Dict[str, KernelSpec] = {}


def register_kernel(name: str, fn, specs: Callable[[str], list], dtypes=("fp32", "fp16", "bf16")):
    if name in _KERNELS:
        raise ValueError(f"kernel {name!r} registered twice")
    _KERNELS[name] = KernelSpec(name, fn, specs, tuple(dtypes))
    return fn


_DEVICE_FUNCTIONS: set = set()


def register_device_function(fn):
    """Mark a ``@triton.jit`` helper that is only called from registered kernels (built inside them)."""
    _DEVICE_FUNCTIONS.add(fn)
    return fn


def is_device_function(fn) -> bool:
    return fn in _DEVICE_FUNCTIONS


def all_kernels() -> Dict[str, KernelSpec]:
    import importlib

    for mod in OP_MODULES:
        importlib.import_module(mod)
    return dict(_KERNELS)
