"""Bench output: markdown tables on stdout, CSV files with environment metadata."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess


def environment(interpreted: bool) -> dict:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'x86'})"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "device": device, "triton_interpreter": interpreted, "git_commit": commit}


def write_csv(path: str, rows: list, meta: dict | None = None) -> None:
    if not rows:
        return
    keys = list(rows[0]) + [k for k in (meta or {}) if k not in rows[0]]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **(meta or {})})


def write_results(root: str, traffic_rows: list, time_rows: list, interpreted: bool) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(root, f"bench-{stamp}")
    os.makedirs(out, exist_ok=True)
    meta = environment(interpreted)
    write_csv(os.path.join(out, "traffic.csv"), traffic_rows, meta)
    write_csv(os.path.join(out, "timing.csv"), time_rows, meta)
    return out


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f}"


def traffic_table(rows: list, interpreted: bool) -> str:
    lines = ["## Memory traffic (MB at the paper size) and kernel launches", "",
             "Triton per-program = each program's repeated accesses to one address counted once (the target "
             "figure); glue = aten ops around the kernels; fused = the two together; x = multiple of the "
             "analytic minimum.", "",
             "| case | dir | min | Triton total | Triton per-program | distinct | glue | fused | x | "
             "launches Triton+glue | eager | x | eager launches |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mn = r["min_bytes"]
        fused = r["triton_per_program"] + r["glue_bytes"]
        floor = r.get("has_floor", True)
        ratio = (lambda b: f"{b / mn:.2f}") if floor else (lambda b: "-")
        lines.append(
            f"| {r['case']} | {r['direction']} | {_mb(mn) if floor else '-'} | {_mb(r['triton_total'])} "
            f"| {_mb(r['triton_per_program'])} | {_mb(r['triton_distinct'])} | {_mb(r['glue_bytes'])} | {_mb(fused)} "
            f"| {ratio(fused)} | {r['triton_launches']}+{r['glue_launches']} | {_mb(r['eager_bytes'])} "
            f"| {ratio(r['eager_bytes'])} | {r['eager_launches']} |")
    if interpreted:
        sizes = sorted({(r["case"], r["measured_size"], r["scale"]) for r in rows})
        lines += ["", "Counted in triton's interpreter on CPU at a reduced size, scaled linearly to the paper size:"]
        lines += [f"- {c}: measured {s}, x{k:g}" for c, s, k in sizes]
    notes = sorted({(r["case"], r["notes"]) for r in rows if r.get("notes")})
    lines += [f"- {c}: {n}" for c, n in notes]
    return "\n".join(lines)


def time_table(rows: list) -> str:
    lines = ["## Times (ms, median [p20, p80]) and achieved bandwidth on the analytic minimum bytes", "",
             "| case | provider | mode | ms | GB/s | % of copy |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['provider']} | {r['mode']} | {r['ms_p50']:.3f} "
                     f"[{r['ms_p20']:.3f}, {r['ms_p80']:.3f}] | {r['achieved_gbs']:,.0f} | {r['pct_of_copy']:.0f} |")
    return "\n".join(lines)


def aot_table(rows: list) -> str:
    lines = ["## Ahead-of-time builds", "", "| kernel | variant | dtype | arch | registers | spill B | smem B |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['arch']} | {r['registers']} "
                     f"| {r['spill_bytes']} | {r['shared_bytes']} |")
    return "\n".join(lines)
