"""``segfuse check-gpu``: the GPU tier of the test suite and the timed bench on a CUDA machine, in one report.

1. **GPU tier**: ``python -m pytest -m cuda`` over the repository's ``tests/`` folder (the tests marked
   ``cuda``: the kernel parity tests' ``cuda-*`` parameters and the pytest-benchmark timings, the
   latter run once each with ``--benchmark-disable`` as a smoke test), with ``TRITON_INTERPRET=0`` so the
   kernels are compiled, not interpreted, and ``--junitxml`` into the output folder.
2. **Timed bench**: every bench case timed with ``triton.testing.do_bench``
   (:func:`segfuse.bench.measure.measure_time`: paper size, bf16, fwd and fwd+bwd, providers segfuse /
   eager / torch.compile), against the measured device copy bandwidth.
3. **One report** in ``--out``: ``report.md`` (environment, GPU-tier summary with the failed test ids,
   timing table), ``timings.csv``, ``tests.csv``, plus pytest's ``junit.xml`` and ``pytest.log``.

Exit status: 0 when every GPU-tier test passed (or was skipped) and every timing ran; 1 when a GPU-tier
test failed or errored, pytest could not run the suite, or a timing raised; 2 without a CUDA GPU (one
line on stderr) or on bad arguments. ``--dry-run`` prints what would run, on any machine.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import pathlib
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

PROG = "segfuse check-gpu"
PROVIDER_ORDER = ("segfuse", "eager", "torch.compile")
MODE_ORDER = ("fwd", "fwd+bwd")
TIMINGS_COLUMNS = ["case", "mode", "provider", "ms_p50", "ms_p20", "ms_p80", "speedup_vs_eager", "min_bytes",
                   "achieved_gbs", "pct_of_copy"]
TESTS_COLUMNS = ["test", "outcome", "seconds", "message"]


# ----------------------------------------------------------------------------------------------- locating

def find_tests_dir() -> pathlib.Path | None:
    """The repository's ``tests/`` folder, found from the location of the ``segfuse`` package (a source
    checkout or an editable install); None where there is none (a wheel install)."""
    import segfuse

    repo = pathlib.Path(segfuse.__file__).resolve().parent.parent
    tests = repo / "tests"
    if (tests / "conftest.py").is_file() and ((repo / "pyproject.toml").is_file() or (repo / "setup.py").is_file()):
        return tests
    return None


def default_out_dir(now: datetime.datetime | None = None) -> str:
    return os.path.join("results", f"check-gpu-{(now or datetime.datetime.now()).strftime('%Y%m%d-%H%M%S')}")


def pytest_command(tests_dir, junit_path, extra=()) -> list:
    """The GPU-tier command line (run with ``TRITON_INTERPRET=0`` in the environment, from the
    repository root so its pytest configuration applies)."""
    import importlib.util

    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-o", "junit_family=xunit1", f"--junitxml={junit_path}",
           "--continue-on-collection-errors"]  # a module that fails to import is reported, the rest still runs
    if importlib.util.find_spec("pytest_benchmark") is not None:
        cmd.append("--benchmark-disable")  # the timing tests run once each; the timed bench does the timing
    return cmd + list(extra) + [str(tests_dir)]


# ------------------------------------------------------------------------------------------------ results

def parse_junit(path, rootdir=None) -> list:
    """Rows ``dict(test, outcome, seconds, message)`` of a pytest junit XML (``junit_family=xunit1``);
    ``test`` is the pytest node id, ``outcome`` one of passed / failed / error / skipped."""
    rows = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        classname, name, file = tc.get("classname", ""), tc.get("name", ""), tc.get("file")
        rows.append(dict(test=_node_id(classname, name, file, rootdir), outcome="passed",
                         seconds=float(tc.get("time", 0) or 0), message=""))
        for kind, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            el = tc.find(kind)
            if el is not None:
                message = (el.get("message") or "").strip()
                detail = next((ln[1:].strip() for ln in (el.text or "").splitlines() if ln.startswith("E ")), "")
                if outcome == "error" and detail and detail not in message:  # "collection failure": say why
                    message = f"{message}: {detail}" if message else detail
                rows[-1].update(outcome=outcome, message=message or (el.text or "").strip())
                break
    return rows


def _node_id(classname: str, name: str, file: str | None, rootdir) -> str:
    parts = classname.split(".") if classname else []
    if file and (not classname or name == classname):  # a module that failed to collect
        return file.replace("\\", "/")
    if file:
        module = file[:-3].replace("/", ".").replace("\\", ".") if file.endswith(".py") else file
        inner = classname[len(module) + 1:].split(".") if classname.startswith(module + ".") else []
        return "::".join([file.replace("\\", "/"), *inner, name])
    if rootdir is not None:
        for i in range(len(parts), 0, -1):
            if (pathlib.Path(rootdir, *parts[:i - 1], parts[i - 1] + ".py")).is_file():
                return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    return "::".join([p for p in (classname, name) if p])


def summarize_tests(rows: list) -> dict:
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    counts["failed_ids"] = [r["test"] for r in rows if r["outcome"] in ("failed", "error")]
    return counts


def timing_table_rows(time_rows: list) -> list:
    """``measure_time`` rows ordered by case, mode, provider, with ``speedup_vs_eager`` (eager median /
    this median for the same case and mode) added; columns :data:`TIMINGS_COLUMNS`."""
    case_order = list(dict.fromkeys(r["case"] for r in time_rows))
    eager = {(r["case"], r["mode"]): r["ms_p50"] for r in time_rows if r["provider"] == "eager"}

    def rank(seq, value):
        return seq.index(value) if value in seq else len(seq)

    out = []
    for r in sorted(time_rows, key=lambda r: (case_order.index(r["case"]), rank(MODE_ORDER, r["mode"]),
                                              rank(PROVIDER_ORDER, r["provider"]), r["provider"])):
        e = eager.get((r["case"], r["mode"]))
        speedup = e / r["ms_p50"] if e and r["ms_p50"] else float("nan")
        out.append({k: r.get(k, float("nan")) for k in TIMINGS_COLUMNS} | {"speedup_vs_eager": speedup})
    return out


def _num(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _first_line(text: str, limit: int = 300) -> str:
    return _cell(text.strip().splitlines()[0][:limit]) if text and text.strip() else ""


_ENV_LABELS = {"device": "GPU", "torch": "torch", "cuda": "CUDA (torch build)", "triton": "triton",
               "python": "python", "git_commit": "git commit", "date": "date (UTC)",
               "copy_gbs": "device copy bandwidth (GB/s, read + write)"}


def write_report(out_dir, environment: dict, tests: list | None, time_rows: list | None, *,
                 pytest_cmd: list | None = None, pytest_returncode: int | None = None,
                 bench_errors=(), notes=()) -> dict:
    """Write ``report.md``, ``timings.csv`` and ``tests.csv`` into ``out_dir`` (created).

    environment: key -> value (``segfuse.bench.report.environment()`` keys plus ``cuda``, ``copy_gbs``);
    tests: :func:`parse_junit` rows, or None when the GPU tier did not run; time_rows: ``measure_time``
    rows, or None when the bench did not run; bench_errors: ``dict(case, provider, mode, error)``.
    Returns the paths written, by name.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = timing_table_rows(time_rows or [])
    paths = {"timings.csv": out / "timings.csv", "tests.csv": out / "tests.csv", "report.md": out / "report.md"}
    for key, columns, rows in (("timings.csv", TIMINGS_COLUMNS, table), ("tests.csv", TESTS_COLUMNS, tests or [])):
        with open(paths[key], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    summary = summarize_tests(tests or [])
    ok = verdict(tests, pytest_returncode, bench_errors)
    lines = ["# segfuse check-gpu", "", f"**Result: {'PASS' if ok else 'FAIL'}**", "", "## Environment", "",
             "| | |", "|---|---|"]
    for key, value in environment.items():
        if key == "copy_gbs":
            value = _num(value, ",.0f")
        lines.append(f"| {_cell(_ENV_LABELS.get(key, key))} | {_cell(value)} |")

    lines += ["", "## GPU tier (`pytest -m cuda`)", ""]
    if tests is None:
        lines.append("Not run.")
    else:
        if pytest_cmd:
            lines += [f"`{shlex.join(map(str, pytest_cmd))}` (TRITON_INTERPRET=0)", ""]
        lines.append(f"**{summary['passed']} passed, {summary['failed']} failed, {summary['error']} errors, "
                     f"{summary['skipped']} skipped**"
                     + (f" (pytest exit status {pytest_returncode})" if pytest_returncode is not None else ""))
        if pytest_returncode not in (None, 0, 1, 5):
            lines += ["", f"pytest did not complete the run (exit status {pytest_returncode}); see pytest.log."]
        if pytest_returncode == 5:
            lines += ["", "No test carries the `cuda` mark in this suite (pytest exit status 5)."]
        failed = [r for r in tests if r["outcome"] in ("failed", "error")]
        if failed:
            lines += ["", "Failed or errored:", ""]
            lines += [f"- `{r['test']}` ({r['outcome']}): {_first_line(r['message'])}" for r in failed]
        reasons: dict = {}
        for r in tests:
            if r["outcome"] == "skipped":
                reasons[r["message"]] = reasons.get(r["message"], 0) + 1
        if reasons:
            lines += ["", "Skipped:", ""]
            lines += [f"- {n} x {_cell(reason) or '(no reason given)'}" for reason, n in
                      sorted(reasons.items(), key=lambda kv: -kv[1])]

    lines += ["", "## Timings", ""]
    if time_rows is None:
        lines.append("Not run.")
    else:
        lines += ["Paper size, bf16; `triton.testing.do_bench` (L2 flushed between runs): ms median [p20, p80]; "
                  "x eager = eager median / this median; GB/s on the analytic minimum bytes (`-` where a case "
                  "has no floor, e.g. a whole network) and as % of the device copy bandwidth.", "",
                  "| case | mode | provider | ms p50 | ms p20 | ms p80 | x eager | GB/s | % of copy |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in table:
            lines.append(f"| {_cell(r['case'])} | {r['mode']} | {r['provider']} | {_num(r['ms_p50'], '.3f')} "
                         f"| {_num(r['ms_p20'], '.3f')} | {_num(r['ms_p80'], '.3f')} "
                         f"| {_num(r['speedup_vs_eager'], '.2f')} | {_num(r['achieved_gbs'], ',.0f')} "
                         f"| {_num(r['pct_of_copy'], '.0f')} |")
    if bench_errors:
        lines += ["", "Timing errors:", ""]
        lines += [f"- {_cell(e['case'])} / {e['provider']} / {e['mode']}: {_first_line(e['error'])}"
                  for e in bench_errors]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Files: `tests.csv` (one row per GPU-tier test), `timings.csv`"
              + (", `junit.xml` and `pytest.log` (pytest's own output)." if tests is not None else "."), ""]
    paths["report.md"].write_text("\n".join(lines))
    return paths


def verdict(tests: list | None, pytest_returncode: int | None, bench_errors=()) -> bool:
    """True when no GPU-tier test failed or errored, pytest completed (exit 0, 1 or 5), and no timing raised."""
    if bench_errors:
        return False
    if tests is not None:
        s = summarize_tests(tests)
        if s["failed"] or s["error"] or pytest_returncode not in (None, 0, 5):
            return False
    return True


# -------------------------------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    found = find_tests_dir()
    parser.description = (parser.description or "") + (
        ". Runs `python -m pytest -m cuda` (TRITON_INTERPRET=0) and times every bench case with "
        "triton.testing.do_bench; writes report.md, timings.csv, tests.csv. Exit 1 if a GPU-tier test fails, "
        "2 without a CUDA GPU.")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="report folder (default: results/check-gpu-<YYYYmmdd-HHMMSS>/ in the current directory)")
    parser.add_argument("--tests", default=None, metavar="PATH",
                        help="test suite folder for the GPU tier (default: the repository's tests/ beside the "
                             f"segfuse package: {found if found else 'not found in this install, pass --tests'})")
    parser.add_argument("--cases", nargs="+", default=None, metavar="NAME",
                        help="bench cases to time (default: every case; `segfuse bench --list` shows the names)")
    parser.add_argument("--pytest-args", default="", metavar="ARGS",
                        help="extra pytest arguments for the GPU tier, one string, e.g. --pytest-args='-x -k dwconv', "
                             "or --pytest-args=--benchmark-skip to leave out the timing tests' single smoke run "
                             "(default: none)")
    parser.add_argument("--no-tests", action="store_true", help="skip the GPU tier (default: run it)")
    parser.add_argument("--no-bench", action="store_true", help="skip the timed bench (default: run it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the pytest command line and the bench cases, run nothing (works without a GPU)")


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _resolve_tests(args):
    """(tests folder, error message): the folder to run, or why there is none."""
    if args.no_tests:
        return None, None
    if args.tests is not None:
        path = pathlib.Path(args.tests).resolve()
        return (path, None) if path.is_dir() else (None, f"--tests {args.tests}: no such folder")
    found = find_tests_dir()
    if found is None:
        import segfuse

        return None, (f"cannot find the test suite: no tests/ beside the segfuse package "
                      f"({pathlib.Path(segfuse.__file__).resolve().parent}; a wheel install has none); pass "
                      f"--tests PATH to a segfuse checkout's tests/ folder, or --no-tests")
    return found, None


def _case_names(args):
    from segfuse.bench.cases import all_cases

    cases = all_cases()
    names = args.cases or list(cases)
    unknown = [n for n in names if n not in cases]
    return cases, names, unknown


def run(args) -> int:
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        return _fail(f"needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}); "
                     f"`{PROG} --dry-run` lists what it would run")
    tests_dir, error = _resolve_tests(args)
    if error:
        return _fail(error)
    out = pathlib.Path(args.out or default_out_dir()).resolve()
    junit = out / "junit.xml"
    cmd = pytest_command(tests_dir, junit, shlex.split(args.pytest_args)) if tests_dir else None

    if args.dry_run:
        return _dry_run(args, cmd, tests_dir, out)

    interpret_was = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"  # before anything imports triton: time and test compiled kernels
    notes = []
    if interpret_was not in (None, "", "0"):
        if any(m.startswith("segfuse.kernels") for m in sys.modules):  # @triton.jit already read it
            return _fail(f"TRITON_INTERPRET={interpret_was} was set and the kernels are already imported; "
                         f"unset it and run `{PROG}` again")
        notes.append(f"TRITON_INTERPRET={interpret_was} was set in the environment; it was turned off for this run.")
    cases, names, unknown = _case_names(args)
    if unknown:
        return _fail(f"unknown case(s) {unknown}; `segfuse bench --list` shows the names")

    from segfuse.bench.report import environment

    env = environment(interpreted=False)
    env = {"device": env["device"], "torch": env["torch"], "cuda": torch.version.cuda, "triton": env["triton"],
           "python": env["python"], "git_commit": _git_commit(env["git_commit"]), "date": env["date"]}
    tests = pytest_rc = None
    out.mkdir(parents=True, exist_ok=True)
    if cmd is not None:
        print(f"[{PROG}] GPU tier: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        junit.unlink(missing_ok=True)  # never read a stale one from an earlier run into the same folder
        pytest_rc = _run_logged(cmd, cwd=tests_dir.parent, env={**os.environ, "TRITON_INTERPRET": "0"},
                                log=out / "pytest.log")
        tests = parse_junit(junit, tests_dir.parent) if junit.is_file() else []
        if not junit.is_file():
            notes.append(f"pytest wrote no junit XML (exit status {pytest_rc}); see pytest.log.")
        write_report(out, env, tests, None, pytest_cmd=cmd, pytest_returncode=pytest_rc, notes=notes)

    time_rows, bench_errors = None, []
    if not args.no_bench:
        time_rows = _timed_bench(cases, names, env, bench_errors)
    paths = write_report(out, env, tests, time_rows, pytest_cmd=cmd, pytest_returncode=pytest_rc,
                         bench_errors=bench_errors, notes=notes)
    ok = verdict(tests, pytest_rc, bench_errors)
    s = summarize_tests(tests or [])
    print(f"[{PROG}] {'PASS' if ok else 'FAIL'}: GPU tier "
          + (f"{s['passed']} passed, {s['failed']} failed, {s['error']} errors, {s['skipped']} skipped"
             if tests is not None else "not run")
          + (f"; timings {len(time_rows)} rows, {len(bench_errors)} errors" if time_rows is not None
             else "; bench not run")
          + f"; report {paths['report.md']}")
    return 0 if ok else 1


def _git_commit(short: str) -> str:
    if not short:
        return "unknown (not a git checkout)"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        return short
    return f"{short} (+ uncommitted changes)" if dirty else short


def _run_logged(cmd, cwd, env, log) -> int:
    """Run cmd, echo its output and keep a copy in ``log``; return its exit status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        return proc.wait()


def _timed_bench(cases, names, env, errors) -> list:
    import torch
    import torch._dynamo

    from segfuse.bench.measure import copy_bandwidth_gbs, measure_time

    copy_gbs = copy_bandwidth_gbs()
    env["copy_gbs"] = copy_gbs
    print(f"[{PROG}] device copy bandwidth: {copy_gbs:,.0f} GB/s (read + write)", file=sys.stderr, flush=True)
    rows = []
    for name in names:
        print(f"[{PROG}] timing {name} ...", file=sys.stderr, flush=True)
        try:
            rows += measure_time(cases[name], copy_gbs=copy_gbs, errors=errors)
        except Exception as exc:  # noqa: BLE001 - a case that cannot be built is reported, the others still run
            errors.append(dict(case=name, provider="(all)", mode="(all)", error=f"{type(exc).__name__}: {exc}"))
        finally:
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    return rows


def _dry_run(args, cmd, tests_dir, out) -> int:
    import torch

    print(f"{PROG} --dry-run: would run")
    if cmd is None:
        print("1. GPU tier: skipped (--no-tests)")
    else:
        print(f"1. GPU tier, in {tests_dir.parent} with TRITON_INTERPRET=0:")
        print(f"   {shlex.join(cmd)}")
    cases, names, unknown = _case_names(args)
    if unknown:
        return _fail(f"unknown case(s) {unknown}; `segfuse bench --list` shows the names")
    if args.no_bench:
        print("2. timed bench: skipped (--no-bench)")
    else:
        print(f"2. timed bench, triton.testing.do_bench, paper size, bf16, providers {', '.join(PROVIDER_ORDER)}, "
              f"modes {', '.join(MODE_ORDER)}, {len(names)} case(s):")
        for n in names:
            print(f"   - {n}: {cases[n].paper_size}")
    print(f"3. report: {out}{os.sep}{{report.md, timings.csv, tests.csv, junit.xml, pytest.log}}")
    if not torch.cuda.is_available():
        print(f"(no CUDA GPU here: without --dry-run, {PROG} exits 2)")
    return 0
