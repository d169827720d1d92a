"""Ahead-of-time compilation of every Triton kernel build a GPU runs, for real GPU targets.

No GPU is needed: ``triton.compile`` lowers to PTX and runs the ptxas shipped in the triton wheel.
The builds are not typed by hand: :func:`segfuse.kernels.registry.capture_specialisations` drives each
op's launch cases at the GPU launch settings with the launches intercepted and records each launch's
signature, constexprs and options. For each build x target this reports registers, spill bytes and
shared memory, read from ptxas's own verbose log of the cubin triton builds.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import time
from typing import Dict, List, Optional

TARGETS = {"sm_80": 80, "sm_90a": 90}  # triton builds sm_90a for capability 90


def compile_one(fn, build: dict, arch: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=build["signature"], constexprs=build["constexprs"])
    log = io.StringIO()
    t0 = time.perf_counter()
    with triton.knobs.nvidia.scope(), triton.knobs.compilation.scope():
        triton.knobs.nvidia.dump_ptxas_log = True
        triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
        with contextlib.redirect_stdout(log):
            options = {k: build[k] for k in ("num_warps", "num_stages", "maxnreg") if k in build}
            compiled = triton.compile(src, target=GPUTarget("cuda", TARGETS[arch], 32), options=options)
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    if not (regs and spill_st and spill_ld):
        raise RuntimeError(f"could not read ptxas's report for {fn.__name__}:\n{text}")
    return {"arch": arch, "registers": int(regs.group(1)),
            "spill_bytes": int(spill_st.group(1)) + int(spill_ld.group(1)),
            "shared_bytes": int(compiled.metadata.shared), "num_warps": build.get("num_warps", 4),
            "seconds": round(time.perf_counter() - t0, 2), "cubin_bytes": len(compiled.asm["cubin"])}


def _compile_job(row: dict, arch: str) -> dict:
    """Build one captured specialisation (picklable: runs in a worker process with the interpreter off)."""
    from segfuse.kernels.registry import all_kernels

    fn = all_kernels()[row["kernel"]].fn
    return {"kernel": row["kernel"], "variant": row["variant"], "dtype": row["dtype"],
            **compile_one(fn, row["build"], arch)}


def _interpreter_on():
    os.environ["TRITON_INTERPRET"] = "1"


def _interpreter_off():
    # @triton.jit gives interpreter objects when TRITON_INTERPRET=1; real builds need it off
    os.environ["TRITON_INTERPRET"] = "0"


def _capture(kernels, dtypes) -> List[dict]:
    from segfuse.kernels.registry import ACTIVATION_DTYPES, capture_specialisations

    rows = capture_specialisations(dtypes or ACTIVATION_DTYPES)
    return [r for r in rows if not kernels or r["kernel"] in kernels]


def build_list(kernels=None, dtypes=None) -> List[dict]:
    """The captured builds (captured in a fresh process with the interpreter on, unless this one has it)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return _capture(kernels, dtypes)
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_interpreter_on) as pool:
        return pool.submit(_capture, kernels, dtypes).result()


def compile_all(kernels: Optional[List[str]] = None, dtypes: Optional[List[str]] = None,
                archs=tuple(TARGETS), workers: int = 1, archs_by_dtype: Optional[Dict[str, tuple]] = None
                ) -> List[Dict]:
    """Compile every captured build (or those of the kernels named) for every target, ``workers`` at a
    time in fresh processes with the interpreter off; one row per build and target. ``archs_by_dtype``
    narrows the targets of the builds of one dtype (e.g. ``{"fp16": ("sm_80",), "bf16": ("sm_90a",)}``:
    the half-precision builds differ from the fp32 ones only in their loads and stores)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    narrow = archs_by_dtype or {}
    jobs = [(row, arch) for row in build_list(kernels, dtypes) for arch in narrow.get(row["dtype"], archs)]
    with cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"),
                                initializer=_interpreter_off) as pool:
        return list(pool.map(_compile_job, *zip(*jobs)))
