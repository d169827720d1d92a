"""Every Triton kernel build a GPU runs compiles ahead of time for real GPUs (sm_80, sm_90a) with zero
register spills. The builds are captured from the ops' launch cases at the GPU launch settings (the
signatures come from the real launch arguments), in fp32 (both targets), fp16 (sm_80) and bf16 (sm_90a). The interpreter accepts code
the compiler rejects; this test is the check that it is real GPU code. No GPU needed: triton's bundled
ptxas builds cubins.
"""
import importlib
import inspect
import os
import pathlib
import re

import pytest

triton = pytest.importorskip("triton")
import triton.runtime.interpreter  # noqa: E402,F401  (InterpretedFunction, also when the interpreter is off)

from segfuse.bench.aot import TARGETS, build_list, compile_all  # noqa: E402
from segfuse.kernels.registry import (ACTIVATION_DTYPES, OP_MODULES, all_kernels, is_device_function,  # noqa: E402
                                      launch_cases)

JIT_TYPES = (triton.runtime.JITFunction, triton.runtime.interpreter.InterpretedFunction)
KERNEL_ROOT = pathlib.Path(importlib.import_module("segfuse.kernels").__file__).parent


def test_every_jit_function_is_registered():
    """A @triton.jit function anywhere in kernels/ must be registered (kernel or device helper)."""
    registered = {ks.fn for ks in all_kernels().values()}
    files = [p for p in KERNEL_ROOT.rglob("*.py") if re.search(r"^\s*@triton\.jit", p.read_text(), re.M)]
    assert files, "no Triton kernels found at all"
    for path in files:
        rel = path.relative_to(KERNEL_ROOT).with_suffix("")
        module = "segfuse.kernels." + ".".join(rel.parts)
        assert module in OP_MODULES, f"{module} defines Triton kernels but is missing from OP_MODULES"
        mod = importlib.import_module(module)
        for name, obj in inspect.getmembers(mod):
            if isinstance(obj, JIT_TYPES) and getattr(obj, "__module__", module) == module:
                assert obj in registered or is_device_function(obj), f"{module}.{name} is not registered"


def test_every_kernel_has_launch_cases_in_every_dtype():
    """The captured builds cover every registered kernel, for every activation dtype, and their
    signatures are the launches' own (tuples of pointers for the loss maps, the labels' dtype)."""
    rows = build_list()
    assert {r["kernel"] for r in rows} == set(all_kernels())
    for name in all_kernels():
        dtypes = {d for r in rows if r["kernel"] == name for d in r["dtype"].split("/")}
        assert dtypes == set(ACTIVATION_DTYPES), f"{name}: built for {sorted(dtypes)}"
    stats = [r for r in rows if r["kernel"] == "mll_stats" and r["variant"].endswith("lomix-M4-C9-all-ops-uint8")]
    assert stats and all(r["build"]["signature"]["maps"] == (f"*{r['dtype']}",) * 4 for r in stats)
    assert all(r["build"]["signature"]["y_ptr"] == "*u8" for r in stats)
    assert {c.op for c in launch_cases()} == {"dwconv", "multi_logit_loss", "ms_deform_attn", "mc_attention"}


# fp32 builds for both targets; the fp16 / bf16 builds (the same kernels but for their loads and stores) once
# each, on the GPU generation that mostly runs them: the suite's time on 2 cores (`segfuse bench --aot`
# compiles every dtype for every target)
HALF_PRECISION_ARCHS = {"fp16": ("sm_80",), "bf16": ("sm_90a",)}


def test_all_kernels_compile_for_sm80_and_sm90a_without_spills():
    rows = compile_all(workers=min(2, os.cpu_count() or 1), archs_by_dtype=HALF_PRECISION_ARCHS)
    assert {r["arch"] for r in rows} == set(TARGETS)
    for dtype, arch in (("fp32", "sm_80"), ("fp32", "sm_90a"), ("fp16", "sm_80"), ("bf16", "sm_90a")):
        assert {r["kernel"] for r in rows if r["arch"] == arch and dtype in r["dtype"].split("/")} == set(all_kernels())
    assert {r["kernel"] for r in rows} == set(all_kernels())
    report = "\n".join(f"{r['kernel']:<22}{r['variant']:<44}{r['dtype']:<15}{r['arch']:<8}regs {r['registers']:>3}  "
                       f"spill {r['spill_bytes']:>4} B  smem {r['shared_bytes']:>6} B" for r in rows)
    print("\n" + report)
    spilled = [r for r in rows if r["spill_bytes"]]
    assert not spilled, "register spills:\n" + report
    assert all(0 < r["registers"] <= 255 for r in rows)
