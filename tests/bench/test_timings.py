"""Timed bench cases as pytest-benchmark tests (CUDA tier, ``pytest.mark.cuda``).

One test per bench case of :func:`segfuse.bench.cases.all_cases`, mode (``fwd``, ``fwd+bwd``) and
provider of :func:`segfuse.bench.measure.timing_providers` -- ``segfuse`` (fused path), ``eager``
(the eager reference under ``force_backend("reference")``) and ``torch.compile`` (of the eager
forward) -- built like ``measure_time`` builds them (paper size, CUDA, bf16). ``benchmark.group`` is
``"<case> <mode>"``, so pytest-benchmark puts the three providers of a case side by side::

    TRITON_INTERPRET=0 python -m pytest -m cuda tests/bench/test_timings.py --benchmark-save=before
    ... change a kernel ...
    TRITON_INTERPRET=0 python -m pytest -m cuda tests/bench/test_timings.py --benchmark-compare

(``TRITON_INTERPRET=0``: tests/conftest.py turns the interpreter on unless the environment says
otherwise, and interpreted kernels are not worth timing; the tests skip with a reason then.)
Each round is timed from an idle GPU to ``torch.cuda.synchronize()`` after the step; before each
round (untimed) a 256 MB buffer is zeroed to evict the inputs from L2, as ``triton.testing.do_bench``
does. ``SEGFUSE_BENCH_ROUNDS`` sets the number of timed rounds (default 20, after 3 warm-up rounds,
the first of which compiles the ``torch.compile`` provider). ``segfuse check-gpu`` runs these once each
with ``--benchmark-disable`` (as a smoke test) and times the cases with ``triton.testing.do_bench``.
"""
import os
import re

import pytest
import torch
import torch._dynamo

from segfuse.bench.cases import all_cases
from segfuse.bench.measure import (TIMING_DTYPE, TIMING_MODES, TIMING_PROVIDERS, build_for_timing,
                                   timing_min_bytes, timing_providers, timing_step)
from segfuse.kernels import force_backend
from segfuse.testing import cuda_marks

pytest.importorskip("pytest_benchmark")

pytestmark = cuda_marks()

CASES = all_cases()
ROUNDS = int(os.environ.get("SEGFUSE_BENCH_ROUNDS", "20"))
WARMUP_ROUNDS = 3
L2_FLUSH_BYTES = 256 * 1024 * 1024


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z+.]+", "_", name).strip("_")


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Overrides the suite's NaN poisoning: filling every ``torch.empty`` would add kernels to the
    timed region (correctness is the parity tests' job, not the timings')."""
    yield


@pytest.fixture(scope="module")
def l2_flush():
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")


@pytest.fixture(scope="module", params=list(CASES), ids=_slug)
def problem(request):
    """(case, problem, providers) of one case, built once for its six tests."""
    case = CASES[request.param]
    torch.manual_seed(0)
    p = build_for_timing(case, TIMING_DTYPE)
    yield case, p, timing_providers(p)
    del p
    torch._dynamo.reset()  # drop the compiled graphs of this case before the next one is built
    torch.cuda.empty_cache()


@pytest.mark.parametrize("provider", TIMING_PROVIDERS)
@pytest.mark.parametrize("mode", TIMING_MODES)
def test_timing(problem, mode, provider, l2_flush, benchmark):
    case, p, providers = problem
    fwd, bwd, backend = providers[provider]
    step = timing_step(fwd, bwd, mode)

    def evict_l2():  # untimed, before every round
        l2_flush.zero_()
        torch.cuda.synchronize()

    def timed():
        with force_backend(backend):
            step()
        torch.cuda.synchronize()

    nbytes = timing_min_bytes(p, mode)
    benchmark.group = f"{case.name} {mode}"
    benchmark.extra_info.update(case=case.name, mode=mode, provider=provider, dtype=str(TIMING_DTYPE),
                                paper_size=case.paper_size, size=p.size, min_bytes=nbytes, has_floor=p.has_floor)
    benchmark.pedantic(timed, setup=evict_l2, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)  # None with --benchmark-disable
    if stats is not None and p.has_floor:
        benchmark.extra_info["achieved_gbs_median"] = nbytes / stats.median / 1e9
