"""Measure one bench case: traffic and launches (interpreter + dispatch counters), and on CUDA, times."""
from __future__ import annotations

import torch

from segfuse.kernels import force_backend

from .cases import BenchCase, Problem
from .traffic import AtenTraffic, InterpreterTraffic


def _fused_step(fn, *args):
    """Run fn under both counters: Triton kernels (interpreter) and the aten glue around them."""
    with AtenTraffic() as glue, InterpreterTraffic() as kern:
        out = fn(*args)
    return out, kern.result, glue


def _eager_step(fn, *args):
    with AtenTraffic() as eager:
        out = fn(*args)
    return out, eager


def measure_traffic(case: BenchCase, dtype=torch.float32) -> list:
    """Rows (one per direction) of traffic figures, scaled to the paper size. CPU + interpreter only."""
    p = case.build(case.interp_scale, torch.device("cpu"), dtype)
    out, k_fwd, g_fwd = _fused_step(p.fused_fwd)
    _, k_bwd, g_bwd = _fused_step(p.fused_bwd, out)
    with force_backend("reference"):
        out, e_fwd = _eager_step(p.eager_fwd)
        _, e_bwd = _eager_step(p.eager_bwd, out)
    s = p.scale_to_full
    rows = []
    for direction, k, g, e, mn in (("fwd", k_fwd, g_fwd, e_fwd, p.min_bytes_fwd),
                                   ("bwd", k_bwd, g_bwd, e_bwd, p.min_bytes_bwd)):
        rows.append(dict(case=case.name, paper_size=case.paper_size, measured_size=p.size, direction=direction,
                         min_bytes=mn * s, triton_total=k.total * s, triton_per_program=k.per_program * s,
                         triton_distinct=k.distinct * s, glue_bytes=g.bytes * s, triton_launches=k.launches,
                         glue_launches=g.launches, eager_bytes=e.bytes * s, eager_launches=e.launches,
                         scale=s, notes=p.notes, has_floor=p.has_floor))
    both = {key: rows[0][key] + rows[1][key] for key in
            ("min_bytes", "triton_total", "triton_per_program", "triton_distinct", "glue_bytes", "triton_launches",
             "glue_launches", "eager_bytes", "eager_launches")}
    rows.append({**rows[0], **both, "direction": "fwd+bwd"})
    return rows


TIMING_DTYPE = torch.bfloat16
TIMING_MODES = ("fwd", "fwd+bwd")
TIMING_PROVIDERS = ("segfuse", "eager", "torch.compile")


def build_for_timing(case: BenchCase, dtype=TIMING_DTYPE) -> Problem:
    """The problem every timing runs: the paper size (scale 1.0) on the current CUDA device."""
    return case.build(1.0, torch.device("cuda"), dtype)


def timing_providers(p: Problem) -> dict:
    """The provider table every timing compares (``measure_time``, ``tests/bench/test_timings.py``):
    ``{name: (fwd, bwd, backend)}`` in ``TIMING_PROVIDERS`` order; run the steps inside
    ``force_backend(backend)``.

    * ``segfuse``: the fused path (Triton kernels on CUDA, "auto" dispatch).
    * ``eager``: the eager PyTorch reference (every op on ``force_backend("reference")``).
    * ``torch.compile``: ``torch.compile`` of the eager forward (backward through the compiled graph);
      ``dynamic=False`` so a second case of the same shape class gets its own static graph instead
      of an automatically dynamic one. Compiled on its first call (keep that out of the timing).
    """
    return {"segfuse": (p.fused_fwd, p.fused_bwd, "auto"),
            "eager": (p.eager_fwd, p.eager_bwd, "reference"),
            "torch.compile": (torch.compile(p.eager_fwd, dynamic=False), p.eager_bwd, "reference")}


def timing_step(fwd, bwd, mode: str):
    """The callable a timing of ``mode`` ("fwd" or "fwd+bwd") runs."""
    if mode == "fwd":
        return lambda: fwd()
    if mode == "fwd+bwd":
        return lambda: bwd(fwd())
    raise ValueError(f"mode must be one of {TIMING_MODES}, got {mode!r}")


def timing_min_bytes(p: Problem, mode: str) -> float:
    """Analytic minimum bytes of ``mode`` (meaningful only where ``p.has_floor``)."""
    return p.min_bytes_fwd if mode == "fwd" else p.min_bytes_fwd + p.min_bytes_bwd


def measure_time(case: BenchCase, dtype=TIMING_DTYPE, copy_gbs: float | None = None,
                 errors: list | None = None) -> list:
    """CUDA only: median/p20/p80 ms of fwd and fwd+bwd for each provider of ``timing_providers``
    (segfuse, eager, torch.compile(eager)), and the achieved GB/s against the analytic minimum bytes
    (and as % of the measured copy bandwidth).

    ``errors``: when a list is given, a provider/mode that raises is recorded there as
    ``dict(case, provider, mode, error)`` and the other timings go on; otherwise the error propagates.
    """
    import triton

    p = build_for_timing(case, dtype)
    rows = []
    for name, (fwd, bwd, backend) in timing_providers(p).items():
        for mode in TIMING_MODES:
            fn, nbytes = timing_step(fwd, bwd, mode), timing_min_bytes(p, mode)
            try:
                with force_backend(backend):
                    q = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            except Exception as exc:  # noqa: BLE001 - recorded for the report when asked to
                if errors is None:
                    raise
                errors.append(dict(case=case.name, provider=name, mode=mode, error=f"{type(exc).__name__}: {exc}"))
                continue
            gbs = nbytes / q[0] / 1e6 if p.has_floor else float("nan")
            rows.append(dict(case=case.name, provider=name, mode=mode, ms_p50=q[0], ms_p20=q[1], ms_p80=q[2],
                             min_bytes=nbytes, achieved_gbs=gbs,
                             pct_of_copy=100 * gbs / copy_gbs if copy_gbs else float("nan")))
    return rows


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write) in GB/s."""
    import triton

    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a))
    return 2 * nbytes / ms / 1e6
