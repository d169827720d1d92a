"""Measure one bench case: traffic and launches (interpreter + dispatch counters), and on CUDA, times."""
from __future__ import annotations

import torch

from segfuse.kernels import force_backend

from .cases import BenchCase
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


def measure_time(case: BenchCase, dtype=torch.bfloat16, copy_gbs: float | None = None) -> list:
    """CUDA only: median/p20/p80 ms of fwd and fwd+bwd for Triton, eager and torch.compile(eager), and the
    achieved GB/s against the analytic minimum bytes (and as % of the measured copy bandwidth)."""
    import triton

    p = case.build(1.0, torch.device("cuda"), dtype)
    providers = {"triton": (p.fused_fwd, p.fused_bwd, "auto"), "eager": (p.eager_fwd, p.eager_bwd, "reference"),
                 "torch.compile": (torch.compile(p.eager_fwd), p.eager_bwd, "reference")}
    rows = []
    for name, (fwd, bwd, backend) in providers.items():
        for mode, fn, nbytes in (("fwd", lambda: fwd(), p.min_bytes_fwd),
                                 ("fwd+bwd", lambda: bwd(fwd()), p.min_bytes_fwd + p.min_bytes_bwd)):
            with force_backend(backend):
                q = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
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
