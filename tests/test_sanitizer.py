"""segfuse.sanitizer.MemorySanitizer: out-of-storage loads/stores/atomics in interpreted kernels.

The kernels here are defined in this module, which pytest imports after conftest has turned the
interpreter on. conftest's suite-wide ``_sanitize`` fixture is overridden below, so each test
installs (and removes) the sanitizer itself.
"""
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter as interp
from triton.tools.tensor_descriptor import TensorDescriptor

from segfuse.bench.traffic import InterpreterTraffic
from segfuse.sanitizer import MemorySanitizer, OutOfBoundsAccess, memory_sanitizer

HOOKED = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")


@pytest.fixture(autouse=True)
def _sanitize():
    """Override conftest's suite-wide sanitizer: these tests enter and leave their own."""
    assert not MemorySanitizer.active()
    yield


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n_load, n_store, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + i, mask=i < n_load, other=0.0)
    tl.store(y_ptr + i, v, mask=i < n_store)


@triton.jit
def _load_scalar_kernel(x_ptr, y_ptr, idx):
    tl.store(y_ptr, tl.load(x_ptr + idx))  # unmasked: create_load / create_store


@triton.jit
def _atomic_add_kernel(out_ptr, limit, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.atomic_add(out_ptr + i, 1.0, mask=i < limit)


@triton.jit
def _atomic_cas_kernel(lock_ptr, idx):
    tl.atomic_cas(lock_ptr + idx, 0, 1)


@triton.jit
def _wild_masked_kernel(x_ptr, y_ptr, n, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    ok = i < n
    wild = tl.where(ok, i, i.to(tl.int64) + (1 << 40))  # masked-off lanes point ~4 TiB away
    if MASKED:
        v = tl.load(x_ptr + wild, mask=ok, other=0.0)
        tl.store(y_ptr + wild, v, mask=ok)
    else:
        v = tl.load(x_ptr + wild)
        tl.store(y_ptr + wild, v)


@triton.jit
def _tuple_sum_kernel(pair, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(pair[0] + i, mask=m)
    b = tl.load(pair[1] + i, mask=m)
    tl.store(out_ptr + i, a + b, mask=m)


@triton.jit
def _cross_read_kernel(a_ptr, out_ptr, off, n, BLOCK: tl.constexpr):
    # reads the second tensor through the first one's pointer: the pattern being removed
    i = tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(a_ptr + i, mask=m)
    b = tl.load(a_ptr + off + i, mask=m)
    tl.store(out_ptr + i, a + b, mask=m)


@triton.jit
def _int32_from_bytes_kernel(b_ptr, out_ptr, idx):
    tl.store(out_ptr, tl.load(b_ptr.to(tl.pointer_type(tl.int32)) + idx))


@triton.jit
def _shifted_read_kernel(v_ptr, out_ptr, shift, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    tl.store(out_ptr + i, tl.load(v_ptr + shift + i, mask=m), mask=m)


@triton.jit
def _desc_copy_kernel(desc, y_ptr, BLOCK: tl.constexpr):
    tl.store(y_ptr + tl.arange(0, BLOCK), desc.load([0]))


def _copy(x, y, n_load, n_store, block=4):
    _copy_kernel[(triton.cdiv(max(n_load, n_store), block),)](x, y, n_load, n_store, BLOCK=block)


def _builder_methods():
    cls = type(interp.interpreter_builder)
    return {name: getattr(cls, name) for name in HOOKED} | {"__call__": interp.GridExecutor.__call__}


# -- violations are caught

def test_load_past_end_raises_naming_kernel_and_load():
    x, y = torch.arange(7, dtype=torch.float32), torch.zeros(8)
    with MemorySanitizer(), pytest.raises(OutOfBoundsAccess) as err:
        _copy(x, y, n_load=8, n_store=8)  # bad mask: one element past x's end
    msg = str(err.value)
    assert isinstance(err.value, AssertionError)
    assert "_copy_kernel" in msg and "load of 1 of 4" in msg, msg
    end = x.untyped_storage().data_ptr() + x.untyped_storage().nbytes()
    assert f"first bad address {end:#x}" in msg, msg
    assert "`x_ptr`" in msg and "ends 4 bytes (1 element of 4 bytes) past its end" in msg, msg


def test_unmasked_scalar_load_past_end_raises():
    x, y = torch.arange(5, dtype=torch.float32), torch.zeros(1)
    with MemorySanitizer():
        _load_scalar_kernel[(1,)](x, y, 4)  # last element: fine
        assert y.item() == 4.0
        with pytest.raises(OutOfBoundsAccess, match=r"_load_scalar_kernel`: load of 1 of 1"):
            _load_scalar_kernel[(1,)](x, y, 5)


def test_store_past_end_raises_naming_store():
    x, y = torch.arange(8, dtype=torch.float32), torch.zeros(7)
    with MemorySanitizer(), pytest.raises(OutOfBoundsAccess) as err:
        _copy(x, y, n_load=8, n_store=8)
    msg = str(err.value)
    assert "_copy_kernel" in msg and "store of 1 of 4" in msg and "`y_ptr`" in msg, msg
    assert y.tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0], "the check runs before the access"


def test_atomic_add_past_end_raises():
    out = torch.zeros(5)
    with MemorySanitizer():
        _atomic_add_kernel[(1,)](out, 5, BLOCK=8)
        assert out.tolist() == [1.0] * 5
        with pytest.raises(OutOfBoundsAccess, match=r"_atomic_add_kernel`: atomic of 1 of 6"):
            _atomic_add_kernel[(1,)](out, 6, BLOCK=8)


def test_atomic_cas_past_end_raises():
    lock = torch.zeros(2, dtype=torch.int32)
    with MemorySanitizer():
        _atomic_cas_kernel[(1,)](lock, 1)
        assert lock.tolist() == [0, 1]
        with pytest.raises(OutOfBoundsAccess, match=r"_atomic_cas_kernel`: atomic of 1 of 1"):
            _atomic_cas_kernel[(1,)](lock, 2)


def test_cross_tensor_pointer_arithmetic_raises():
    a, b, out = torch.arange(5, dtype=torch.float32), torch.full((5,), 10.0), torch.zeros(5)
    off = (b.data_ptr() - a.data_ptr()) // a.element_size()
    assert off * a.element_size() == b.data_ptr() - a.data_ptr()
    # without the sanitizer this "works": the interpreter, like a GPU, reads b's memory
    _cross_read_kernel[(1,)](a, out, off, 5, BLOCK=8)
    assert out.tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    with MemorySanitizer(), pytest.raises(OutOfBoundsAccess) as err:
        _cross_read_kernel[(1,)](a, out, off, 5, BLOCK=8)
    msg = str(err.value)
    assert "_cross_read_kernel" in msg and "load of 5 of 5" in msg and f"{b.data_ptr():#x}" in msg, msg


def test_element_straddling_the_end_raises():
    """The whole element must fit: a 4-byte load starting 2 bytes before the end is out of bounds."""
    raw = torch.arange(6, dtype=torch.uint8)  # 6 bytes: int32 element 0 fits, element 1 straddles
    out = torch.zeros(1, dtype=torch.int32)
    with MemorySanitizer():
        _int32_from_bytes_kernel[(1,)](raw, out, 0)
        assert out.item() == int.from_bytes(bytes([0, 1, 2, 3]), "little")
        with pytest.raises(OutOfBoundsAccess, match=r"4-byte element.*`b_ptr`.*ends 2 bytes \(0.50 elements"):
            _int32_from_bytes_kernel[(1,)](raw, out, 1)


# -- legal accesses pass

def test_masked_odd_size_passes():
    x, y = torch.arange(7, dtype=torch.float32), torch.zeros(7)
    with MemorySanitizer() as s:
        _copy(x, y, n_load=7, n_store=7)  # 2 programs of 4, last lane masked off
    assert torch.equal(x, y)
    assert s.accesses == 4 and s.addresses == 14, "every masked-in lane was checked"


def test_masked_off_wild_addresses_pass():
    x, y = torch.arange(3, dtype=torch.float32), torch.zeros(3)
    with memory_sanitizer() as s:
        _wild_masked_kernel[(1,)](x, y, 3, MASKED=True, BLOCK=8)
        assert torch.equal(x, y)
        # the same addresses unmasked are caught before anything is read
        with pytest.raises(OutOfBoundsAccess, match=r"load of 5 of 8"):
            _wild_masked_kernel[(1,)](x, y, 3, MASKED=False, BLOCK=8)
    assert s.addresses == 3 + 3 + 8


def test_tuple_argument_tensors_pass():
    a, b, out = torch.arange(5, dtype=torch.float32), torch.full((5,), 10.0), torch.zeros(5)
    with MemorySanitizer() as s:
        _tuple_sum_kernel[(1,)]((a, b), out, 5, BLOCK=8)
    assert out.tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert s.addresses == 15


def test_tensor_passed_by_keyword_passes():
    x, y = torch.arange(6, dtype=torch.float32), torch.zeros(6)
    with MemorySanitizer():
        _copy_kernel[(2,)](x_ptr=x, y_ptr=y, n_load=6, n_store=6, BLOCK=4)
    assert torch.equal(x, y)


def test_tensor_descriptor_base_is_an_argument_storage():
    x, y = torch.arange(12, dtype=torch.float32), torch.zeros(16)
    with MemorySanitizer() as s:
        # the descriptor's block runs past x, the interpreter masks those lanes off (zero padding)
        _desc_copy_kernel[(1,)](TensorDescriptor(x, [12], [1], [16]), y, BLOCK=16)
        assert y.tolist() == list(range(12)) + [0.0] * 4
        with pytest.raises(OutOfBoundsAccess, match=r"load of 4 of 16.*`desc.base`.*past its end"):
            _desc_copy_kernel[(1,)](TensorDescriptor(x, [16], [1], [16]), y, BLOCK=16)  # wrong shape
    assert s.addresses == 12 + 16 + 16


def test_view_with_storage_offset_is_checked_per_storage():
    """The check is per storage, not per view: outside the view but inside its storage is allowed."""
    parent = torch.arange(16, dtype=torch.float32)
    view = parent[4:8]
    assert view.storage_offset() == 4
    out = torch.zeros(16)
    with MemorySanitizer():
        _shifted_read_kernel[(1,)](view, out, -4, 16, BLOCK=16)  # the whole parent storage
        assert torch.equal(out, parent)
        with pytest.raises(OutOfBoundsAccess, match=r"load of 1 of 16.*`v_ptr`.*1 element of 4 bytes\) before"):
            _shifted_read_kernel[(1,)](view, out, -5, 16, BLOCK=16)
        with pytest.raises(OutOfBoundsAccess, match=r"load of 1 of 16.*`v_ptr`.*past its end"):
            _shifted_read_kernel[(1,)](view, out, -3, 16, BLOCK=16)


# -- nesting with InterpreterTraffic, re-entrance, restoration

def _traffic_of_copy(n=7):
    x, y = torch.arange(n, dtype=torch.float32), torch.zeros(n)
    with InterpreterTraffic() as t:
        _copy(x, y, n, n)
    assert torch.equal(x, y)
    return t.result


@pytest.mark.parametrize("order", ["sanitizer-inside-traffic", "traffic-inside-sanitizer"])
def test_nesting_with_interpreter_traffic(order):
    before = _builder_methods()
    plain = _traffic_of_copy()
    assert plain.load_total == 28 and plain.store_total == 28 and plain.launches == 1
    x, y, bad_y = torch.arange(7, dtype=torch.float32), torch.zeros(7), torch.zeros(6)
    s = MemorySanitizer()
    if order == "sanitizer-inside-traffic":
        with InterpreterTraffic() as t, s:
            _copy(x, y, 7, 7)
            with pytest.raises(OutOfBoundsAccess, match="store"):
                _copy(x, bad_y, 7, 7)
    else:
        with s, InterpreterTraffic() as t:
            _copy(x, y, 7, 7)
            with pytest.raises(OutOfBoundsAccess, match="store"):
                _copy(x, bad_y, 7, 7)
    assert torch.equal(x, y)
    r = t.result
    # the good launch counts exactly as without the sanitizer; the bad one adds its 7 loads and
    # program 0's 4 stores, plus program 1's faulting store (3 lanes) only where InterpreterTraffic's
    # hook runs before the sanitizer's (it was installed later, i.e. entered inside it)
    assert r.launches == 2
    assert r.load_total == plain.load_total + 28
    assert r.store_total == plain.store_total + (16 if order == "sanitizer-inside-traffic" else 28)
    assert s.addresses == 14 + 14
    assert _builder_methods() == before


def test_reentrant_and_nested_sanitizers_restore_originals():
    before = _builder_methods()
    outer, inner = MemorySanitizer(), MemorySanitizer()
    x, y = torch.arange(7, dtype=torch.float32), torch.zeros(6)
    with outer:
        patched = _builder_methods()
        assert all(patched[k] is not before[k] for k in before)
        with outer, inner:
            assert _builder_methods() == patched, "only the outermost enter patches"
            _copy(x, torch.zeros(7), 7, 7)
        assert _builder_methods() == patched, "an inner exit does not restore"
        assert inner.addresses == 14
        with pytest.raises(OutOfBoundsAccess):
            _copy(x, y, 7, 7)
    assert _builder_methods() == before
    assert not MemorySanitizer.active()
    _copy(x, y, 6, 6)  # unsanitized again: no error, nothing counted
    assert outer.addresses == 14 + 14


def test_restores_after_violation_and_error_is_not_wrapped():
    before = _builder_methods()
    x, y = torch.arange(3, dtype=torch.float32), torch.zeros(3)
    with pytest.raises(OutOfBoundsAccess) as err:
        with MemorySanitizer():
            _copy(x, y, 4, 3)
    assert type(err.value) is OutOfBoundsAccess
    assert _builder_methods() == before
