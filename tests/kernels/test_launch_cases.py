"""Every launch case of every op (the specialisations the compile test builds) run for real at the GPU
launch settings (tile sizes, warps, program counts) and compared with the reference path, forward and
every gradient: in the interpreter (fp32) and, on a CUDA machine, compiled in fp32, fp16 and bf16.
"""
import pytest
import torch

from segfuse.kernels import force_backend
from segfuse.kernels.dispatch import force_launch_settings
from segfuse.kernels.registry import launch_cases
from segfuse.testing import assert_verbose_allclose, cuda_marks, tolerance

CASES = launch_cases()
DEVICE_DTYPES = [pytest.param("cpu", torch.float32, id="interpreter-fp32")] + [
    pytest.param("cuda", dt, id=f"cuda-{name}", marks=cuda_marks())
    for dt, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16"))]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}:{c.label}" for c in CASES])
def test_launch_case_matches_reference_at_gpu_settings(case, device, dtype):
    with force_backend("triton"), force_launch_settings("gpu"):
        got = case.run(dtype, device)
    with force_backend("reference"):
        want = case.run(torch.float32, device)  # the oracle in fp32 on the same (seeded) inputs
    assert len(got) == len(want)
    for i, (a, e) in enumerate(zip(got, want)):
        atol, rtol = tolerance(dtype, scale=max(e.abs().max().item(), 1e-3))
        assert_verbose_allclose(a.float(), e.float(), atol, rtol, f"{case.op}:{case.label} output {i}")
