"""``segfuse check-gpu``: what runs without a GPU -- the refusal (exit 2, one line), ``--dry-run``, ``--help``,
the junit parser and the report writer on synthetic rows, and the GPU-tier pipeline end to end on a tiny
synthetic suite with ``torch.cuda.is_available`` faked (no timing)."""
import csv
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from segfuse import check_gpu
from segfuse.cli import main


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_without_cuda_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    _no_cuda(monkeypatch)
    assert main(["check-gpu", "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "needs a CUDA GPU" in err and "--dry-run" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_command_without_cuda_exits_2_without_traceback():
    res = subprocess.run([sys.executable, "-m", "segfuse", "check-gpu"], capture_output=True, text=True)
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("segfuse check-gpu: needs a CUDA GPU")


def test_help_lists_the_options_with_defaults():
    res = subprocess.run([sys.executable, "-m", "segfuse", "check-gpu", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "400"})  # no wrapping inside a path
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for opt in ("--out", "--tests", "--cases", "--pytest-args", "--no-tests", "--no-bench", "--dry-run"):
        assert opt in text
    assert "results/check-gpu-<YYYYmmdd-HHMMSS>/" in text
    assert str(check_gpu.find_tests_dir()) in text


def test_dry_run_lists_the_pytest_command_and_every_case(monkeypatch, capsys, tmp_path):
    from segfuse.bench.cases import all_cases

    _no_cuda(monkeypatch)
    out_dir = tmp_path / "report"
    assert main(["check-gpu", "--dry-run", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    tests_dir = check_gpu.find_tests_dir()
    assert tests_dir is not None and (tests_dir / "conftest.py").is_file()
    cmd_line = next(line for line in out.splitlines() if " -m pytest " in line)
    assert " -m cuda " in cmd_line
    assert f"--junitxml={out_dir / 'junit.xml'}" in cmd_line
    assert cmd_line.rstrip().endswith(str(tests_dir))
    assert "TRITON_INTERPRET=0" in out
    for name in all_cases():
        assert name in out
    assert "segfuse, eager, torch.compile" in out and "fwd, fwd+bwd" in out
    assert "exits 2" in out  # says this machine could not run it for real
    assert not out_dir.exists()  # a dry run writes nothing


def test_dry_run_options(monkeypatch, capsys, tmp_path):
    _no_cuda(monkeypatch)
    assert main(["check-gpu", "--dry-run", "--no-tests", "--cases", "dwconv DMK 2D", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU tier: skipped" in out and "dwconv DMK 2D" in out and "dwconv LMS 2D" not in out
    assert main(["check-gpu", "--dry-run", "--pytest-args=-x -k dwconv", "--out", str(tmp_path)]) == 0
    assert " -x -k dwconv " in capsys.readouterr().out
    assert main(["check-gpu", "--dry-run", "--cases", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_missing_test_suite_is_a_clear_error(monkeypatch, capsys, tmp_path):
    _no_cuda(monkeypatch)
    assert main(["check-gpu", "--dry-run", "--tests", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    monkeypatch.setattr(check_gpu, "find_tests_dir", lambda: None)  # as in a wheel install
    assert main(["check-gpu", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cannot find the test suite" in err and "--tests PATH" in err


def _time_rows():
    rows = []
    for case, floor in (("dwconv LMS 2D", True), ("LGMSNet-2D train step", False)):
        for mode, scale in (("fwd", 1.0), ("fwd+bwd", 3.0)):
            for provider, ms in (("torch.compile", 1.5), ("eager", 4.0), ("segfuse", 1.0)):  # not in report order
                gbs = 2e9 / (ms * scale) / 1e6 if floor else float("nan")
                rows.append(dict(case=case, provider=provider, mode=mode, ms_p50=ms * scale, ms_p20=0.9 * ms * scale,
                                 ms_p80=1.1 * ms * scale, min_bytes=2e9, achieved_gbs=gbs,
                                 pct_of_copy=100 * gbs / 4000 if floor else float("nan")))
    return rows


TESTS = [dict(test="tests/kernels/test_dwconv.py::test_forward[cuda-bf16]", outcome="passed", seconds=0.5, message=""),
         dict(test="tests/kernels/test_dwconv.py::test_forward[cuda-fp16]", outcome="failed", seconds=0.2,
              message="AssertionError: y: 3/100 elements differ\nmore detail"),
         dict(test="tests/kernels/test_dwconv.py::TestGrad::test_dx[cuda-fp32]", outcome="error", seconds=0.1,
              message="RuntimeError: CUDA error"),
         dict(test="tests/bench/test_timings.py::test_timing[x-fwd-segfuse]", outcome="passed", seconds=2.0,
              message=""),
         dict(test="tests/kernels/test_dwconv.py::test_3d[cuda-bf16]", outcome="skipped", seconds=0.0,
              message="needs sm_90")]
ENV = {"device": "NVIDIA H200", "torch": "2.13.0+cu126", "cuda": "12.6", "triton": "3.9.0", "python": "3.11.9",
       "git_commit": "abc1234", "date": "2026-01-01T00:00:00+00:00", "copy_gbs": 4000.0}


def test_write_report_on_synthetic_rows(tmp_path):
    paths = check_gpu.write_report(tmp_path / "out", ENV, TESTS, _time_rows(), pytest_cmd=["python", "-m", "pytest"],
                                   pytest_returncode=1)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.md", "timings.csv", "tests.csv"}
    with open(paths["timings.csv"]) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == check_gpu.TIMINGS_COLUMNS == [
            "case", "mode", "provider", "ms_p50", "ms_p20", "ms_p80", "speedup_vs_eager", "min_bytes", "achieved_gbs",
            "pct_of_copy"]
        timings = list(reader)
    assert len(timings) == 12
    assert [(r["mode"], r["provider"]) for r in timings[:6]] == [
        ("fwd", "segfuse"), ("fwd", "eager"), ("fwd", "torch.compile"),
        ("fwd+bwd", "segfuse"), ("fwd+bwd", "eager"), ("fwd+bwd", "torch.compile")]
    assert [float(r["speedup_vs_eager"]) for r in timings[:3]] == pytest.approx([4.0, 1.0, 4.0 / 1.5])
    assert float(timings[0]["achieved_gbs"]) == pytest.approx(2000.0)
    assert math.isnan(float(timings[6]["achieved_gbs"]))  # a whole network has no floor
    with open(paths["tests.csv"]) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == check_gpu.TESTS_COLUMNS == ["test", "outcome", "seconds", "message"]
        assert [r["outcome"] for r in reader] == ["passed", "failed", "error", "passed", "skipped"]

    md = paths["report.md"].read_text()
    assert "**Result: FAIL**" in md
    for text in ("NVIDIA H200", "2.13.0+cu126", "3.9.0", "abc1234", "4,000"):
        assert text in md
    assert "2 passed, 1 failed, 1 errors, 1 skipped" in md
    assert "`tests/kernels/test_dwconv.py::test_forward[cuda-fp16]` (failed): AssertionError: y: 3/100" in md
    assert "more detail" not in md  # one line per failure; the rest is in pytest.log / tests.csv
    assert "TestGrad::test_dx[cuda-fp32]" in md and "1 x needs sm_90" in md
    assert "| case | mode | provider | ms p50 | ms p20 | ms p80 | x eager | GB/s | % of copy |" in md
    assert "| dwconv LMS 2D | fwd | segfuse | 1.000 | 0.900 | 1.100 | 4.00 | 2,000 | 50 |" in md
    assert "| LGMSNet-2D train step | fwd+bwd | eager | 12.000 | 10.800 | 13.200 | 1.00 | - | - |" in md


def test_report_verdict_and_parts_not_run(tmp_path):
    passed = [t for t in TESTS if t["outcome"] in ("passed", "skipped")]
    assert check_gpu.verdict(passed, 0) and check_gpu.verdict([], 5) and check_gpu.verdict(None, None)
    assert not check_gpu.verdict(TESTS, 1)
    assert not check_gpu.verdict([], 4)  # pytest could not run (usage error), no junit
    assert not check_gpu.verdict(passed, 0, [dict(case="c", provider="p", mode="fwd", error="OOM")])
    paths = check_gpu.write_report(tmp_path, ENV, passed, None, pytest_returncode=0)
    md = paths["report.md"].read_text()
    assert "**Result: PASS**" in md and "## Timings\n\nNot run." in md
    with open(paths["timings.csv"]) as f:
        assert next(csv.reader(f)) == check_gpu.TIMINGS_COLUMNS  # header even when empty


def test_parse_junit_builds_node_ids(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
        <testcase classname="tests.kernels.test_dwconv" name="test_f[cuda-fp32]" file="tests/kernels/test_dwconv.py" line="3" time="0.25"/>
        <testcase classname="tests.kernels.test_dwconv.TestG" name="test_g[cuda-bf16]" file="tests/kernels/test_dwconv.py" line="9" time="0.5"><failure message="AssertionError: bad">trace</failure></testcase>
        <testcase classname="tests.test_x" name="test_e" file="tests/test_x.py" time="0.0"><error message="failed on setup with &quot;boom&quot;">trace</error></testcase>
        <testcase classname="tests.test_x" name="test_s" file="tests/test_x.py" time="0.0"><skipped type="pytest.skip" message="CUDA tier: needs a GPU">x</skipped></testcase>
        <testcase classname="" name="tests.test_y" file="tests/test_y.py" time="0.0"><error message="collection failure">tests/test_y.py:3: in &lt;module&gt;
        E   ImportError: no kernel</error></testcase>
        </testsuite></testsuites>"""))
    rows = check_gpu.parse_junit(xml)
    assert [(r["test"], r["outcome"]) for r in rows] == [
        ("tests/kernels/test_dwconv.py::test_f[cuda-fp32]", "passed"),
        ("tests/kernels/test_dwconv.py::TestG::test_g[cuda-bf16]", "failed"),
        ("tests/test_x.py::test_e", "error"),
        ("tests/test_x.py::test_s", "skipped"),
        ("tests/test_y.py", "error")]  # a module that failed to import
    assert rows[0]["seconds"] == 0.25 and rows[1]["message"] == "AssertionError: bad"
    assert rows[4]["message"] == "collection failure: ImportError: no kernel"
    assert check_gpu.summarize_tests(rows)["failed_ids"] == [rows[1]["test"], rows[2]["test"], rows[4]["test"]]


def test_gpu_tier_pipeline_on_a_synthetic_suite(monkeypatch, tmp_path, capsys):
    """The real run() path (pytest subprocess, junit, report, exit status) with CUDA faked and no timing."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: gpu tier\n")
    suite = tmp_path / "tests"
    suite.mkdir()
    (suite / "conftest.py").write_text("")
    (suite / "test_tier.py").write_text(textwrap.dedent("""\
        import os
        import pytest

        @pytest.mark.cuda
        def test_ok():
            assert os.environ["TRITON_INTERPRET"] == "0"

        @pytest.mark.cuda
        def test_broken():
            assert 1 == 2, "kernel mismatch"

        @pytest.mark.cuda
        @pytest.mark.skip(reason="not on this GPU")
        def test_skipped():
            pass

        def test_cpu_only():  # not in the GPU tier
            pass
        """))
    (suite / "test_broken_import.py").write_text("raise ImportError('no kernel')\n")  # the rest still runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # run() sets it to 0; monkeypatch restores the suite's value
    out = tmp_path / "report"
    rc = main(["check-gpu", "--tests", str(suite), "--no-bench", "--out", str(out)])
    assert rc == 1
    assert {"report.md", "tests.csv", "timings.csv", "junit.xml", "pytest.log"} <= {p.name for p in out.iterdir()}
    with open(out / "tests.csv") as f:
        rows = {r["test"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tests/test_tier.py::test_ok", "tests/test_tier.py::test_broken",
                         "tests/test_tier.py::test_skipped", "tests/test_broken_import.py"}
    assert rows["tests/test_broken_import.py"]["outcome"] == "error"
    assert "ImportError: no kernel" in rows["tests/test_broken_import.py"]["message"]
    assert rows["tests/test_tier.py::test_ok"]["outcome"] == "passed"
    assert rows["tests/test_tier.py::test_broken"]["outcome"] == "failed"
    assert "kernel mismatch" in rows["tests/test_tier.py::test_broken"]["message"]
    md = (out / "report.md").read_text()
    assert "Fake GPU" in md and "1 passed, 1 failed, 1 errors, 1 skipped" in md
    assert "`tests/test_tier.py::test_broken` (failed)" in md and "1 x not on this GPU" in md
    assert "## Timings\n\nNot run." in md
    assert "FAIL" in capsys.readouterr().out

    (suite / "test_broken_import.py").unlink()
    (suite / "test_tier.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_ok():\n    pass\n")
    assert main(["check-gpu", "--tests", str(suite), "--no-bench", "--out", str(out)]) == 0
    assert "**Result: PASS**" in (out / "report.md").read_text()


# ------------------------------------------------------------------ the tier parametrisation check-gpu selects

from segfuse.testing import (DEVICES, TOLERANCES, assert_bitwise_equal, device_dtype_params,  # noqa: E402
                             dtypes_for, tolerance)


def test_tier_params_ids_and_marks():
    assert [p.id for p in DEVICES] == ["interpreter", "cuda"]
    assert [p.id for p in device_dtype_params()] == ["interpreter-fp32", "interpreter-fp16", "cuda-fp32", "cuda-fp16",
                                                     "cuda-bf16"]
    for p in device_dtype_params():
        names = [m.name for m in p.marks]
        assert ("cuda" in names) == (p.values[0] == "cuda")
        if p.values[0] == "cuda":
            reasons = [m.kwargs["reason"] for m in p.marks if m.name == "skipif"]
            assert "CUDA tier: needs a GPU (run `segfuse check-gpu` on a CUDA machine)" in reasons
    assert dtypes_for("cpu") == [torch.float32, torch.float16]
    assert dtypes_for(torch.device("cuda", 0)) == [torch.float32, torch.float16, torch.bfloat16]
    assert set(TOLERANCES) == {torch.float32, torch.float16, torch.bfloat16}
    assert tolerance(torch.float32) == (1e-5, 1e-4) and tolerance(torch.bfloat16, scale=10.0) == (0.5, 5e-2)
    with pytest.raises(ValueError, match="no default tolerance"):
        tolerance(torch.int32)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_tier_smoke(device, dtype):
    """Runs in both tiers (the cuda ones only under `segfuse check-gpu`): a tensor of each dtype on each device."""
    x = torch.linspace(-1, 1, 33, device=device).to(dtype)
    assert_bitwise_equal(x, x.clone(), "x")
    y = x.clone()
    y[7] = -y[7]
    with pytest.raises(AssertionError, match=r"x: not bitwise equal: 1/33 elements differ .* index \(7,\)"):
        assert_bitwise_equal(x, y, "x")
