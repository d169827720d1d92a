"""``segfuse bench``: memory traffic and launch counts of the fused kernels vs eager PyTorch.

On a machine without a GPU the Triton kernels run in triton's interpreter (``TRITON_INTERPRET=1`` is
set here, before triton is imported) at a reduced size and the figures are scaled to the paper
size. On a CUDA machine the same cases are also timed with ``triton.testing.do_bench``.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", nargs="*", default=None,
                        help="case names to run (default: every case not marked slow in the interpreter)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", default="results", help="folder for the CSV files (default: results/)")
    parser.add_argument("--aot", action="store_true",
                        help="also compile every kernel for sm_80/sm_90a and report registers, spills, shared memory")


def _prepare_interpreter() -> bool:
    """Turn the interpreter on when there is no GPU; it must happen before triton is imported."""
    import torch

    if torch.cuda.is_available():
        return False
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before the bench could set TRITON_INTERPRET=1; "
                           "run `TRITON_INTERPRET=1 segfuse bench`")
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def run(args) -> int:
    interpreted = _prepare_interpreter()
    from . import report
    from .cases import all_cases
    from .measure import measure_time, measure_traffic

    cases = all_cases()
    if args.list:
        for name, case in cases.items():
            print(f"{name:<40} {case.paper_size}{'  (slow in the interpreter)' if case.slow_in_interpreter else ''}")
        return 0
    names = args.cases or [n for n, c in cases.items() if not (interpreted and c.slow_in_interpreter)]
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; `segfuse bench --list` shows the names")
    traffic_rows, time_rows = [], []
    copy_gbs = None
    if not interpreted:
        from .measure import copy_bandwidth_gbs

        copy_gbs = copy_bandwidth_gbs()
        print(f"device copy bandwidth: {copy_gbs:,.0f} GB/s (read + write)", file=sys.stderr)
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        if interpreted:
            traffic_rows += measure_traffic(cases[name])
        else:
            time_rows += measure_time(cases[name], copy_gbs=copy_gbs)
    out_dir = report.write_results(args.out, traffic_rows, time_rows, interpreted)
    print(report.traffic_table(traffic_rows, interpreted) if traffic_rows else report.time_table(time_rows))
    if args.aot:
        from .aot import compile_all

        aot_rows = compile_all(workers=min(2, os.cpu_count() or 1))
        report.write_csv(os.path.join(out_dir, "aot.csv"), aot_rows)
        print(report.aot_table(aot_rows))
    print(f"\nCSV written to {out_dir}/")
    return 0
