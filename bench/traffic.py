"""Memory traffic without a GPU.

* :class:`InterpreterTraffic` hooks triton's interpreter (loads, stores, atomics, and the start of
  each program instance) and counts bytes three ways:
    - ``total``: every access, as issued;
    - ``per_program``: each program instance's repeated accesses to one address counted once (a
      cache private to each program, nothing shared between programs) — the figure targets use;
    - ``distinct``: each address once over the whole counted region (compulsory traffic).
  Loads and stores are counted separately (an atomic counts as a load and a store). It also counts
  kernel launches.
* :class:`AtenTraffic` is a ``TorchDispatchMode`` that sums, for each aten op, the bytes of its
  tensor inputs and outputs, and counts ops that would launch a kernel (views and allocations move
  no data and launch nothing, so they are skipped). This is how eager PyTorch is measured.

Both need CPU tensors; ``InterpreterTraffic`` needs ``TRITON_INTERPRET=1`` set before triton was imported.
"""
from __future__ import annotations

import dataclasses
from typing import List

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from segfuse.kernels.dispatch import interpreter_enabled


@dataclasses.dataclass
class Traffic:
    """Byte counts of one measured region."""
    load_total: int = 0
    store_total: int = 0
    load_per_program: int = 0
    store_per_program: int = 0
    load_distinct: int = 0
    store_distinct: int = 0
    launches: int = 0
    programs: int = 0

    @property
    def total(self) -> int:
        return self.load_total + self.store_total

    @property
    def per_program(self) -> int:
        return self.load_per_program + self.store_per_program

    @property
    def distinct(self) -> int:
        return self.load_distinct + self.store_distinct


class _Accesses:
    """Addresses and element sizes touched by one program (or one whole region)."""

    def __init__(self):
        self.addrs: List[np.ndarray] = []
        self.sizes: List[np.ndarray] = []

    def add(self, addrs: np.ndarray, size: int):
        self.addrs.append(addrs)
        self.sizes.append(np.full(addrs.shape, size, dtype=np.int64))

    def unique(self):
        """(unique addresses, their element sizes)."""
        if not self.addrs:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        a = np.concatenate(self.addrs)
        s = np.concatenate(self.sizes)
        a, idx = np.unique(a, return_index=True)
        return a, s[idx]


class InterpreterTraffic:
    """Count the bytes Triton kernels move while they run in the interpreter.

    >>> with InterpreterTraffic() as t:
    ...     y = some_triton_op(x)
    >>> t.result.per_program
    """

    def __init__(self):
        self.result = Traffic()
        self._prog = {"load": _Accesses(), "store": _Accesses()}
        self._all = {"load": _Accesses(), "store": _Accesses()}
        self._saved = {}

    # -- recording
    def _record(self, kind: str, ptrs, mask):
        data = np.asarray(ptrs.data).astype(np.uint64, copy=False).ravel()
        if mask is not None:
            data = data[np.broadcast_to(np.asarray(mask.data, dtype=bool), np.shape(ptrs.data)).ravel()]
        if data.size == 0:
            return
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        if kind == "load":
            self.result.load_total += data.size * size
        else:
            self.result.store_total += data.size * size
        self._prog[kind].add(data, size)

    def _end_program(self):
        for kind, acc in self._prog.items():
            a, s = acc.unique()
            if a.size:
                if kind == "load":
                    self.result.load_per_program += int(s.sum())
                else:
                    self.result.store_per_program += int(s.sum())
                self._all[kind].add(a, 0)
                self._all[kind].sizes[-1] = s
        self._prog = {"load": _Accesses(), "store": _Accesses()}

    # -- patching
    def __enter__(self):
        from triton.runtime import interpreter as interp

        builder = interp.interpreter_builder
        cls = type(builder)
        self._saved = {name: getattr(cls, name) for name in
                       ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas",
                        "set_grid_idx")}
        self._saved_call = interp.GridExecutor.__call__
        me, saved = self, self._saved

        def masked_load(b, ptrs, mask, other, cache_policy, is_volatile):
            me._record("load", ptrs, mask)
            return saved["create_masked_load"](b, ptrs, mask, other, cache_policy, is_volatile)

        def masked_store(b, ptrs, value, mask, cache_policy):
            me._record("store", ptrs, mask)
            return saved["create_masked_store"](b, ptrs, value, mask, cache_policy)

        def atomic_rmw(b, rmw_op, ptr, val, mask, sem, scope):
            me._record("load", ptr, mask)
            me._record("store", ptr, mask)
            return saved["create_atomic_rmw"](b, rmw_op, ptr, val, mask, sem, scope)

        def atomic_cas(b, ptr, cmp, val, sem, scope):
            me._record("load", ptr, None)
            me._record("store", ptr, None)
            return saved["create_atomic_cas"](b, ptr, cmp, val, sem, scope)

        def set_grid_idx(b, x, y, z):
            me._end_program()
            me.result.programs += 1
            return saved["set_grid_idx"](b, x, y, z)

        def grid_call(executor, *args, **kwargs):
            me.result.launches += 1
            try:
                return me._saved_call(executor, *args, **kwargs)
            finally:
                me._end_program()

        cls.create_masked_load = masked_load
        cls.create_masked_store = masked_store
        cls.create_atomic_rmw = atomic_rmw
        cls.create_atomic_cas = atomic_cas
        cls.set_grid_idx = set_grid_idx
        interp.GridExecutor.__call__ = grid_call
        return self

    def __exit__(self, *exc):
        from triton.runtime import interpreter as interp

        cls = type(interp.interpreter_builder)
        for name, fn in self._saved.items():
            setattr(cls, name, fn)
        interp.GridExecutor.__call__ = self._saved_call
        self._end_program()
        for kind, acc in self._all.items():
            _, s = acc.unique()
            if kind == "load":
                self.result.load_distinct = int(s.sum())
            else:
                self.result.store_distinct = int(s.sum())
        return False


# aten ops that only make views or allocate: no data moved, no kernel launched
_NO_TRAFFIC = {
    "view", "_unsafe_view", "reshape", "as_strided", "t", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "alias", "detach",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "_to_copy_meta",
    "unflatten", "flatten", "narrow", "diagonal", "view_as", "_reshape_alias", "set_", "resize_",
    "is_same_size", "_has_compatible_shallow_copy_type", "sym_size", "sym_stride", "sym_numel", "dim", "size",
    "stride", "is_contiguous", "_local_scalar_dense", "item",
}


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class InsideInterpreterKernel:
    """``active`` is True while triton's interpreter runs a kernel (between entering and leaving this context),
    so that a dispatch mode can skip the interpreter's own host staging, which a GPU launch never makes.
    Outside the interpreter (``TRITON_INTERPRET`` off) it never becomes active and patches nothing."""

    def __init__(self):
        self.active = False
        self._saved = None

    def __enter__(self):
        if not interpreter_enabled():
            return self
        from triton.runtime import interpreter as interp

        saved = self._saved = interp.GridExecutor.__call__
        me = self

        def grid_call(executor, *args, **kwargs):
            me.active = True
            try:
                return saved(executor, *args, **kwargs)
            finally:
                me.active = False

        interp.GridExecutor.__call__ = grid_call
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            from triton.runtime import interpreter as interp

            interp.GridExecutor.__call__ = self._saved
            self._saved = None
        return False


class AtenTraffic(TorchDispatchMode):
    """Sum each aten op's tensor input + output bytes; count the ops that launch a kernel.

    ``ops`` keeps ``(name, bytes)`` for each counted op, in order.
    """

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.launches = 0
        self.ops: List[tuple] = []
        self._kernel = InsideInterpreterKernel()
        self._depth = 0  # our own ops re-enter this mode

    def __enter__(self):
        # the interpreter stages kernel arguments through host copies that a GPU launch never makes:
        # ops issued while it runs a kernel are not counted. Re-entrant: our own ops re-enter this mode
        # (see __torch_dispatch__), so only the outermost enter/exit patches and restores.
        self._depth += 1
        if self._depth == 1:
            self._kernel.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._kernel.__exit__(*exc)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "segfuse":
            # our own registered ops: their Triton kernels are counted by InterpreterTraffic; run the
            # Python body with this mode active so the glue ops inside (partial sums, fills) count too
            from torch._library.custom_ops import OPDEFS

            with self:
                return OPDEFS[f"segfuse::{func._opname}"]._init_fn(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if self._kernel.active:
            return out
        name = func.overloadpacket.__name__.rstrip("_") if func.overloadpacket.__name__ != "set_" else "set_"
        if name in _NO_TRAFFIC or func.overloadpacket.__name__ in _NO_TRAFFIC:
            return out
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        tensors += [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        nbytes = sum(_tensor_bytes(t) for t in tensors)
        self.bytes += nbytes
        self.launches += 1
        self.ops.append((func.overloadpacket.__name__, nbytes))
        return out
