"""Every ``@triton.jit`` kernel of the package, and the specialisations a GPU runs, taken from real launches.

* A kernel file registers each kernel once with :func:`register_kernel` and each ``@triton.jit``
  helper with :func:`register_device_function`; the compile test fails on an unregistered one.
* Each op family lists its **launch cases** once (:func:`register_launch_cases`): small inputs that
  drive the op's public API forward and backward at the GPU launch settings, per activation dtype.
  :func:`capture_specialisations` runs every case with the kernels' launches intercepted (nothing
  executes) and turns each launch's real arguments into a build: the signature from the arguments'
  types (``*fp16``, ``i32``, tuples of pointers, ...), the constexprs from the values passed, and the
  launch options (``num_warps``, ``maxnreg``). The ahead-of-time compile test and ``segfuse bench
  --aot`` build exactly those; the interpreter parity tests run the same cases, so every
  specialisation a GPU would run is exercised on CPU too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Dict, List

# modules that define Triton kernels and launch cases; the compile test imports each of them
OP_MODULES: List[str] = ["segfuse.kernels.dwconv.triton", "segfuse.kernels.dwconv.specs",
                         "segfuse.kernels.multi_logit_loss.mixing", "segfuse.kernels.multi_logit_loss.triton",
                         "segfuse.kernels.multi_logit_loss.specs",
                         "segfuse.kernels.ms_deform_attn.triton", "segfuse.kernels.ms_deform_attn.specs",
                         "segfuse.kernels.mc_attention.triton", "segfuse.kernels.mc_attention.specs"]
ACTIVATION_DTYPES = ("fp32", "fp16", "bf16")
LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


@dataclasses.dataclass
class KernelSpec:
    name: str
    fn: object


@dataclasses.dataclass
class LaunchCase:
    """One way an op is used: ``run(dtype, device)`` builds inputs in ``dtype`` (a ``torch.dtype``) on
    ``device`` and calls the op's public API forward and backward. ``label`` names it in reports."""
    op: str
    label: str
    run: Callable


_KERNELS: Dict[str, KernelSpec] = {}
_CASES: List[LaunchCase] = []
_DEVICE_FUNCTIONS: set = set()


def register_kernel(name: str, fn):
    if name in _KERNELS:
        raise ValueError(f"kernel {name!r} registered twice")
    _KERNELS[name] = KernelSpec(name, fn)
    return fn


def register_device_function(fn):
    """Mark a ``@triton.jit`` helper that is only called from registered kernels (built inside them)."""
    _DEVICE_FUNCTIONS.add(fn)
    return fn


def is_device_function(fn) -> bool:
    return fn in _DEVICE_FUNCTIONS


def register_launch_cases(op: str, cases: Dict[str, Callable]) -> None:
    """``cases``: ``{label: run(dtype, device)}`` for one op family."""
    for label, run in cases.items():
        _CASES.append(LaunchCase(op, label, run))


def _import_ops():
    import importlib

    for mod in OP_MODULES:
        importlib.import_module(mod)


def all_kernels() -> Dict[str, KernelSpec]:
    _import_ops()
    return dict(_KERNELS)


def launch_cases() -> List[LaunchCase]:
    _import_ops()
    return list(_CASES)


# ----------------------------------------------------------------------------- capture
def _python_fn(fn):
    return getattr(fn, "fn", fn)


def _kernel_name(fn) -> str:
    """The registered name of a launched kernel (a JITFunction, or the interpreter's copy of its body)."""
    key = (_python_fn(fn).__module__, _python_fn(fn).__qualname__)
    for name, ks in _KERNELS.items():
        if (_python_fn(ks.fn).__module__, _python_fn(ks.fn).__qualname__) == key:
            return name
    raise RuntimeError(f"launch of an unregistered kernel {getattr(fn, '__name__', fn)!r}")


def _build_of(jit_fn, arg_names, constexpr_names, bound: dict, options: dict) -> dict:
    """Signature / constexprs / options of one launch, as ``triton.compile`` takes them."""
    from triton.runtime.jit import mangle_type

    signature, constexprs = {}, {}  # signature in parameter order, constexprs marked "constexpr"
    for name in arg_names:
        value = bound[name]
        if name in constexpr_names or value is None:
            signature[name] = "constexpr"
            constexprs[name] = value
        else:
            signature[name] = mangle_type(value)
    return {"signature": signature, "constexprs": constexprs,
            **{k: v for k, v in options.items() if k in LAUNCH_OPTIONS and v is not None}}


@contextlib.contextmanager
def intercept_launches(record: list):
    """Within the block, kernel launches append ``(kernel name, build)`` to ``record`` instead of running.

    Works with triton's interpreter on (patches its grid executor) and off (patches ``JITFunction.run``);
    tensors may live on the CPU either way."""
    import inspect

    from triton.runtime import interpreter as interp
    from triton.runtime.jit import JITFunction

    saved_grid, saved_run = interp.GridExecutor.__call__, JITFunction.run

    def grid_call(executor, *args, **kwargs):
        params = inspect.signature(executor.fn).parameters
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
        bound = inspect.signature(executor.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        names = list(params)
        record.append((_kernel_name(executor.fn),
                       _build_of(executor.fn, names, set(executor.constexprs), dict(bound.arguments), options)))

    def jit_run(fn, *args, grid, warmup, **kwargs):
        names = [p.name for p in fn.params]
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        bound = dict(zip(names, args))
        bound.update(kwargs)
        for p in fn.params:
            if p.name not in bound:
                bound[p.name] = p.default
        record.append((_kernel_name(fn), _build_of(fn, names, {p.name for p in fn.params if p.is_constexpr},
                                                   bound, options)))

    interp.GridExecutor.__call__ = grid_call
    JITFunction.run = jit_run
    try:
        yield record
    finally:
        interp.GridExecutor.__call__ = saved_grid
        JITFunction.run = saved_run


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def capture_specialisations(dtypes=ACTIVATION_DTYPES) -> List[dict]:
    """Every distinct build the launch cases produce, for each dtype, at the GPU launch settings and at the
    interpreter's (an op that keeps interpreter-only tile sizes must build those without spills too).

    Returns rows ``{"kernel", "variant" (op:case label, "+interp" for a build only the interpreter
    settings make), "dtype", "build"}``, one per distinct (kernel, build); a build several dtypes share (an
    fp32-only finalize kernel) is listed once, with its dtypes joined by "/". The kernels run nowhere:
    launches are intercepted."""
    import torch

    from .dispatch import force_backend, force_launch_settings

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:  # without a GPU the ops reach their Triton launchers only through the interpreter's dispatch rule
        raise RuntimeError("capture_specialisations needs TRITON_INTERPRET=1 (set before triton is imported) "
                           "on a machine without a GPU")
    rows: Dict[tuple, dict] = {}
    torch_dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for settings in ("gpu", "interpreter"):
        for case in launch_cases():
            for dtype in dtypes:
                record: list = []
                with intercept_launches(record), force_backend("triton"), force_launch_settings(settings):
                    case.run(torch_dtypes[dtype], device)
                for kernel, build in record:
                    key = (kernel, _freeze(build))
                    if key in rows:
                        if dtype not in rows[key]["dtype"].split("/"):
                            rows[key]["dtype"] += "/" + dtype
                    else:
                        suffix = "" if settings == "gpu" else "+interp"
                        rows[key] = {"kernel": kernel, "variant": f"{case.op}:{case.label}{suffix}", "dtype": dtype,
                                     "build": build}
    return list(rows.values())
