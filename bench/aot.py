"""Ahead-of-time compilation of every registered Triton kernel for real GPU targets.

No GPU is needed: ``triton.compile`` lowers to PTX and runs the ptxas shipped in the triton wheel.
For each kernel x dtype x specialisation x target this reports registers, spill bytes and shared
memory, read from ptxas's own verbose log of the cubin triton builds. The interpreter accepts code
the compiler rejects; this is the check that the kernels are real GPU code.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import time
from typing import Dict, List, Optional

TARGETS = {"sm_80": 80, "sm_90a": 90}  # triton builds sm_90a for capability 90


def compile_one(fn, spec: dict, arch: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**spec["signature"], **{k: "constexpr" for k in spec["constexprs"]}}
    src = ASTSource(fn=fn, signature=signature, constexprs=spec["constexprs"])
    log = io.StringIO()
    t0 = time.perf_counter()
    with triton.knobs.nvidia.scope(), triton.knobs.compilation.scope():
        triton.knobs.nvidia.dump_ptxas_log = True
        triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
        with contextlib.redirect_stdout(log):
            options = {"num_warps": spec.get("num_warps", 4)}
            if spec.get("maxnreg"):
                options["maxnreg"] = spec["maxnreg"]
            compiled = triton.compile(src, target=GPUTarget("cuda", TARGETS[arch], 32), options=options)
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    if not (regs and spill_st and spill_ld):
        raise RuntimeError(f"could not read ptxas's report for {fn.__name__}:\n{text}")
    return {"arch": arch, "registers": int(regs.group(1)),
            "spill_bytes": int(spill_st.group(1)) + int(spill_ld.group(1)),
            "shared_bytes": int(compiled.metadata.shared), "num_warps": spec.get("num_warps", 4),
            "seconds": round(time.perf_counter() - t0, 2), "cubin_bytes": len(compiled.asm["cubin"])}


def compile_by_name(kernel: str, dtype: str, index: int, arch: str) -> dict:
    """Build the ``index``-th specialisation of a registered kernel (picklable: for process pools)."""
    from segfuse.kernels.registry import all_kernels

    ks = all_kernels()[kernel]
    spec = ks.specs(dtype)[index]
    return {"kernel": kernel, "dtype": dtype, "variant": spec.get("label", str(index)),
            **compile_one(ks.fn, spec, arch)}


def build_list(kernels=None, dtypes=None, archs=tuple(TARGETS)):
    """Every (kernel, dtype, spec index, arch) the registry asks for."""
    from segfuse.kernels.registry import all_kernels

    jobs = []
    for name, ks in sorted(all_kernels().items()):
        if kernels and name not in kernels:
            continue
        for dtype in ks.dtypes:
            if dtypes and dtype not in dtypes:
                continue
            jobs += [(name, dtype, i, arch) for i in range(len(ks.specs(dtype))) for arch in archs]
    return jobs


def _compiler_process():
    # @triton.jit gives interpreter objects when TRITON_INTERPRET=1; real builds need it off
    os.environ["TRITON_INTERPRET"] = "0"


def compile_all(kernels: Optional[List[str]] = None, dtypes: Optional[List[str]] = None,
                archs=tuple(TARGETS), workers: int = 1) -> List[Dict]:
    """Compile every registered kernel (or those named), ``workers`` builds at a time; one row per build.

    Builds run in fresh worker processes with the interpreter off, so this works from a process that
    runs kernels in the interpreter (the test suite) as well.
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    jobs = build_list(kernels, dtypes, archs)
    with cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"),
                                initializer=_compiler_process) as pool:
        return list(pool.map(compile_by_name, *zip(*jobs)))
