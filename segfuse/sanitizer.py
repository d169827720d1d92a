"""Memory sanitizer for Triton's interpreter: every access must land in one of the launch's tensors.

What is checked
---------------
While a :class:`MemorySanitizer` is active, every *masked-in* address that a Triton kernel loads,
stores or updates atomically (``tl.load``/``tl.store`` on pointer tensors, with or without a mask,
``tl.atomic_*`` incl. ``atomic_cas``, and tensor-descriptor loads/stores, which the interpreter
lowers to masked loads/stores) is checked before the access is made: the whole element
``[addr, addr + element_size)`` must lie inside the storage
(``untyped_storage()``: ``data_ptr() .. data_ptr() + nbytes()``) of one of the tensors passed to
*that launch* — positional and keyword arguments, tensors inside tuple (and list) arguments, the
``base`` of a ``TensorDescriptor`` argument and of a ``triton.reinterpret`` wrapper. Masked-off lanes
are not checked (their addresses may be anything). A violation raises :class:`OutOfBoundsAccess`
(an ``AssertionError``) naming the kernel, the kind of access (load/store/atomic), the number of bad
addresses, the first bad address and the nearest argument storage (its argument name and how far
outside it the access is, in bytes and elements). The check runs before the access is made, so the
interpreter never touches the foreign memory.

The check is per *storage*, not per view: a kernel given a view (a slice, a tensor with a storage
offset) may read or write anywhere in the storage behind it, including outside the view. That is
memory the caller owns and a GPU would not fault on; checking exact view extents would need the
kernel's intent (strides, padding), which a generic checker does not have.

Why
---
On a GPU with unified addressing, reading another allocation through pointer arithmetic
(``a_ptr + (b.data_ptr() - a.data_ptr()) // 4 + i``) or one element past the end of a tensor
usually does not fault: the address is mapped (often inside the same caching-allocator segment),
so the kernel silently reads some other tensor's bytes, and it works until the allocator lays
memory out differently. compute-sanitizer (memcheck) and any allocation-aware checker flag it, and
so does this one — cheaply enough (numpy ``searchsorted`` of the addresses over the launch's
storage ranges, sorted once per launch) to run over the whole test suite in the interpreter.

Use
---
>>> with MemorySanitizer():
...     y = some_triton_op(x)          # raises OutOfBoundsAccess on a stray access

``tests/conftest.py`` runs every test inside one when the interpreter is on; set
``SEGFUSE_SANITIZE=0`` in the environment to turn that off (e.g. to time the suite without it).

How it hooks the interpreter (Triton 3.9)
-----------------------------------------
On the outermost ``__enter__`` it wraps, on ``type(triton.runtime.interpreter.interpreter_builder)``,
``create_masked_load``, ``create_masked_store``, ``create_atomic_rmw`` and ``create_atomic_cas``
(unmasked ``create_load``/``create_store``, ``create_atomic_load``/``create_atomic_store``/
``create_atomic_poll`` and the descriptor loads/stores all go through the masked pair), and
``GridExecutor.__call__`` (to know the current launch's kernel and argument storages — taken
from the host copies its ``_init_args_hst`` makes, wrapped on the executor instance only — and to
re-raise an :class:`OutOfBoundsAccess` that the interpreter wrapped into an ``InterpreterError``).
Each wrapper chains to whatever method was installed at enter (so it nests with
:class:`segfuse.bench.traffic.InterpreterTraffic` either way round); the outermost ``__exit__``
restores exactly those. Nested/re-entrant use is counted: only the outermost enter/exit patch and
restore. Triton is imported lazily, inside ``__enter__``.
"""
from __future__ import annotations

import threading
from typing import Any, List, Optional, Tuple

import numpy as np

__all__ = ["MemorySanitizer", "OutOfBoundsAccess", "memory_sanitizer"]

_BUILDER_METHODS = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")


class OutOfBoundsAccess(AssertionError):
    """A kernel touched memory outside every storage passed to its launch."""


class _Launch:
    """The storages one kernel launch may touch, as sorted, non-overlapping byte ranges."""

    __slots__ = ("kernel", "starts", "ends", "raw")

    def __init__(self, kernel: str, storages: List[Tuple[str, int, int, Any]]):
        self.kernel = kernel
        # raw: (name, start, nbytes, element size of the tensor), for error messages
        self.raw = storages
        spans = sorted({(s, s + n) for _, s, n, _ in storages if n > 0})
        merged: List[List[int]] = []
        for s, e in spans:
            if merged and s < merged[-1][1]:  # overlapping storages (aliases): one range; touching ones stay apart
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.starts = np.array([s for s, _ in merged], dtype=np.uint64)
        self.ends = np.array([e for _, e in merged], dtype=np.uint64)

    def bad(self, addrs: np.ndarray, size: int) -> np.ndarray:
        """Boolean array: which addresses' elements lie outside every range."""
        if self.starts.size == 0:
            return np.ones(addrs.shape, dtype=bool)
        idx = np.searchsorted(self.starts, addrs, side="right").astype(np.int64) - 1
        below = idx < 0
        idx[below] = 0
        # addr >= start holds wherever idx >= 0; the element must end by the range's end
        # (compare as addr > end - size so a wild address near 2**64 cannot wrap around)
        ends = self.ends[idx]
        return below | (ends < np.uint64(size)) | (addrs > ends - np.uint64(size))


class _State:
    """Process-wide: patches are shared by all MemorySanitizer instances (outermost one installs)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.depth = 0
        self.saved: dict = {}
        self.saved_call = None
        self.builder_cls = None
        self.executor_cls = None
        self.launches: List[Optional[_Launch]] = []  # stack: the innermost is the running launch
        self.accesses = 0   # memory operations checked
        self.addresses = 0  # masked-in addresses checked


_STATE = _State()


def _element_size(ptrs) -> int:
    ty = ptrs.dtype
    elt = getattr(ty, "element_ty", None)
    if elt is not None and hasattr(elt, "is_ptr") and elt.is_ptr():
        return 8  # pointer to pointers
    bits = ptrs.get_element_ty().primitive_bitwidth
    return max(1, (bits + 7) // 8)


def _storages_of(name: str, arg, out: List[Tuple[str, int, int, Any]]):
    """Append (name, storage start, storage nbytes, element size) for every tensor inside ``arg``."""
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return
    if isinstance(arg, (tuple, list)):
        for i, a in enumerate(arg):
            _storages_of(f"{name}[{i}]", a, out)
        return
    if hasattr(arg, "untyped_storage"):  # torch.Tensor
        st = arg.untyped_storage()
        out.append((name, int(st.data_ptr()), int(st.nbytes()), int(arg.element_size())))
        return
    base = getattr(arg, "base", None)  # TensorDescriptor, triton.reinterpret's TensorWrapper
    if base is not None and hasattr(base, "untyped_storage"):
        _storages_of(f"{name}.base", base, out)


def _fmt_elems(nbytes: int, size: int) -> str:
    n = nbytes / size
    n_txt = str(int(n)) if n == int(n) else f"{n:.2f}"
    return f"{nbytes} bytes ({n_txt} element{'' if n == 1 else 's'} of {size} bytes)"


def _nearest(launch: _Launch, addr: int, size: int) -> str:
    best = None
    for name, start, nbytes, _ in launch.raw:
        end = start + nbytes
        if addr < start:
            dist, where = start - addr, f"starts {_fmt_elems(start - addr, size)} before its start"
        elif addr + size > end:
            over = addr + size - end
            dist, where = over, f"ends {_fmt_elems(over, size)} past its end"
        else:  # inside this storage but the caller says it is bad: cannot happen, report anyway
            dist, where = 0, "lies inside it"
        if best is None or dist < best[0]:
            best = (dist, f"`{name}` (storage [{start:#x}, {end:#x}), {nbytes} bytes): the access {where}")
    return best[1] if best is not None else "none (the launch has no tensor arguments)"


def _check(kind: str, ptrs, mask):
    """Raise OutOfBoundsAccess if a masked-in element of ``ptrs`` lies outside the launch's storages."""
    st = _STATE
    if not st.launches or st.launches[-1] is None:
        return  # not inside a launch we know about
    launch = st.launches[-1]
    data = np.asarray(ptrs.data)
    if mask is not None:
        m = np.asarray(mask.data, dtype=bool)
        if m.shape != data.shape:
            m = np.broadcast_to(m, data.shape)
        addrs = data[m]
    else:
        addrs = data.ravel()
    addrs = addrs.astype(np.uint64, copy=False)
    st.accesses += 1
    st.addresses += addrs.size
    if addrs.size == 0:
        return
    size = _element_size(ptrs)
    bad = launch.bad(addrs, size)
    if not bad.any():
        return
    n_bad = int(bad.sum())
    first = int(addrs[np.argmax(bad)])
    raise OutOfBoundsAccess(
        f"kernel `{launch.kernel}`: {kind} of {n_bad} of {addrs.size} masked-in address(es) outside "
        f"every storage passed to the launch; first bad address {first:#x} ({size}-byte element); "
        f"nearest argument storage: {_nearest(launch, first, size)}")


def _unwrap(exc: BaseException) -> Optional[OutOfBoundsAccess]:
    """The OutOfBoundsAccess inside an exception chain (the interpreter wraps kernel errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OutOfBoundsAccess):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _install():
    from triton.runtime import interpreter as interp

    st = _STATE
    cls = type(interp.interpreter_builder)
    st.builder_cls, st.executor_cls = cls, interp.GridExecutor
    saved = st.saved = {name: getattr(cls, name) for name in _BUILDER_METHODS}
    saved_call = st.saved_call = interp.GridExecutor.__call__

    def create_masked_load(b, ptrs, mask, other, cache_policy, is_volatile):
        _check("load", ptrs, mask)
        return saved["create_masked_load"](b, ptrs, mask, other, cache_policy, is_volatile)

    def create_masked_store(b, ptrs, value, mask, cache_policy):
        _check("store", ptrs, mask)
        return saved["create_masked_store"](b, ptrs, value, mask, cache_policy)

    def create_atomic_rmw(b, rmwOp, ptr, val, mask, sem, scope):
        _check("atomic", ptr, mask)
        return saved["create_atomic_rmw"](b, rmwOp, ptr, val, mask, sem, scope)

    def create_atomic_cas(b, ptr, cmp, val, sem, scope):
        _check("atomic", ptr, None)
        return saved["create_atomic_cas"](b, ptr, cmp, val, sem, scope)

    def grid_call(executor, *args, **kwargs):
        names = list(getattr(executor, "arg_names", None) or [])
        storages: List[Tuple[str, int, int, Any]] = []
        for i, a in enumerate(args):
            _storages_of(names[i] if i < len(names) else f"arg{i}", a, storages)
        for k, a in kwargs.items():
            _storages_of(k, a, storages)
        kernel = getattr(executor.fn, "__name__", repr(executor.fn))
        st.launches.append(_Launch(kernel, storages))
        depth = len(st.launches)
        # The kernel sees the host copies _init_args_hst makes (for CPU tensors: the same storages,
        # so the same addresses). Where it exists, take the ranges from those copies: exact for
        # device tensors too. A per-instance attribute: nothing global to restore.
        init_hst = getattr(executor, "_init_args_hst", None)
        if init_hst is not None:
            def _init_args_hst(args_dev, kw):
                args_hst, kwargs_hst = init_hst(args_dev, kw)
                hst: List[Tuple[str, int, int, Any]] = []
                for i, a in enumerate(args_hst):
                    _storages_of(names[i] if i < len(names) else f"arg{i}", a, hst)
                for k, a in kwargs_hst.items():
                    _storages_of(k, a, hst)
                st.launches[depth - 1] = _Launch(kernel, hst)
                return args_hst, kwargs_hst

            executor._init_args_hst = _init_args_hst
        try:
            return saved_call(executor, *args, **kwargs)
        except OutOfBoundsAccess:
            raise
        except Exception as e:  # the interpreter re-raises kernel errors as InterpreterError(repr(e))
            oob = _unwrap(e)
            if oob is None:
                raise
            raise oob.with_traceback(oob.__traceback__) from None
        finally:
            st.launches.pop()
            if init_hst is not None:
                executor.__dict__.pop("_init_args_hst", None)

    for name, fn in (("create_masked_load", create_masked_load), ("create_masked_store", create_masked_store),
                     ("create_atomic_rmw", create_atomic_rmw), ("create_atomic_cas", create_atomic_cas)):
        fn.__segfuse_sanitizer__ = True
        setattr(cls, name, fn)
    grid_call.__segfuse_sanitizer__ = True
    interp.GridExecutor.__call__ = grid_call


def _uninstall():
    st = _STATE
    for name, fn in st.saved.items():
        setattr(st.builder_cls, name, fn)
    st.executor_cls.__call__ = st.saved_call
    st.saved, st.saved_call, st.builder_cls, st.executor_cls = {}, None, None, None


class MemorySanitizer:
    """Check every masked-in load/store/atomic address of interpreted Triton kernels (see module doc).

    Re-entrant and nestable: only the outermost active sanitizer patches the interpreter. ``accesses``
    and ``addresses`` count the memory operations and masked-in addresses checked while this instance
    was active (all sanitizers share the hooks, so nested ones count the same operations).
    """

    def __init__(self):
        self._start: List[Tuple[int, int]] = []
        self.accesses = 0
        self.addresses = 0

    def __enter__(self):
        st = _STATE
        with st.lock:
            if st.depth == 0:
                _install()
            st.depth += 1
        self._start.append((st.accesses, st.addresses))
        return self

    def __exit__(self, *exc):
        st = _STATE
        a0, n0 = self._start.pop()
        self.accesses, self.addresses = st.accesses - a0, st.addresses - n0
        with st.lock:
            st.depth -= 1
            if st.depth == 0:
                _uninstall()
        return False

    @staticmethod
    def active() -> bool:
        """True while some MemorySanitizer has the interpreter hooked."""
        return _STATE.depth > 0


def memory_sanitizer() -> MemorySanitizer:
    """A new :class:`MemorySanitizer` (use as ``with memory_sanitizer(): ...``)."""
    return MemorySanitizer()
