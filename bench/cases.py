"""Benchmark problems at the sizes the seed papers train at.

Each :class:`BenchCase` builds a :class:`Problem` at a given ``scale`` (1.0 = the paper size; the
Triton interpreter counts traffic at a reduced size and the report scales it back by
``Problem.scale_to_full``). A problem exposes the fused path and the eager path as separate forward and
backward steps so traffic is counted for each.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List


@dataclasses.dataclass
class Problem:
    """One benchmark problem, built at some size.

    fused_fwd() -> out; fused_bwd(out) runs the backward of the fused path (e.g. ``out.backward(g)``);
    eager_fwd / eager_bwd the same for the eager PyTorch reference.
    min_bytes_fwd / min_bytes_bwd: analytic minimum traffic at the built size (each true input read
    once, each output written once). scale_to_full: multiply figures measured at the built size by
    this to get the paper size (1.0 when built at full size). size: human-readable built size.
    """
    fused_fwd: Callable[[], Any]
    fused_bwd: Callable[[Any], None]
    eager_fwd: Callable[[], Any]
    eager_bwd: Callable[[Any], None]
    min_bytes_fwd: float
    min_bytes_bwd: float
    scale_to_full: float = 1.0
    size: str = ""
    notes: str = ""
    has_floor: bool = True  # False where min_bytes is no analytic floor (whole networks)


@dataclasses.dataclass
class BenchCase:
    """A named problem family: ``build(scale, device, dtype) -> Problem``.

    ``interp_scale`` is the scale the CPU interpreter measures at (small enough to finish in a minute).
    ``slow_in_interpreter`` cases run on the CPU only when asked for by name (``--cases``).
    """
    name: str
    paper_size: str
    build: Callable[..., Problem]
    interp_scale: float = 1.0
    slow_in_interpreter: bool = False


_CASES: Dict[str, BenchCase] = {}


def register_case(case: BenchCase) -> BenchCase:
    if case.name in _CASES:
        raise ValueError(f"bench case {case.name!r} registered twice")
    _CASES[case.name] = case
    return case


# modules that define cases (each calls register_case at import)
CASE_MODULES: List[str] = ["segfuse.bench.cases_dwconv", "segfuse.bench.cases_loss", "segfuse.bench.cases_models",
                           "segfuse.bench.cases_msda", "segfuse.bench.cases_mca", "segfuse.bench.cases_maskmed"]


def all_cases() -> Dict[str, BenchCase]:
    import importlib

    for mod in CASE_MODULES:
        importlib.import_module(mod)
    return dict(_CASES)
