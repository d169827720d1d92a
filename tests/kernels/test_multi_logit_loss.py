"""Fused multi-logit Dice + CE kernels against the eager reference (loss, per-map losses, every gradient).

Runs the Triton kernels in the interpreter (conftest sets TRITON_INTERPRET=1); shapes are tiny because
the interpreter pays per op. Each case compares ``force_backend("triton")`` with ``force_backend("reference")``.
"""
import pytest
import torch

from segfuse.kernels import dispatch, force_backend, force_launch_settings
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.specs import make_problem
from segfuse.testing import assert_bitwise_equal, assert_verbose_allclose, cuda_marks

LOMIX = dict(ce_weight=0.3, dice_weight=0.7, squared=True, batch=True, include_background=True)


def _problem(M, B, C, sizes, target_size, ops, dtype=torch.float32, scale=1.0, label_dtype=torch.int64):
    return make_problem(M, B, C, sizes, target_size, ops, dtype=dtype, label_dtype=label_dtype, scale=scale,
                        seed=int(torch.randint(0, 2 ** 31, ()).item()))


def _run(backend, maps, y, params, ops, **kw):
    with force_backend(backend):
        loss, per_map = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=ops, return_per_map=True,
                                            **{k: v for k, v in params.items() if k != "raw_weights"}, **kw)
        leaves = list(maps) + list(params.values())
        grads = torch.autograd.grad(loss, leaves)
    return loss, per_map, grads


def _compare(maps, y, params, ops, atol=1e-5, rtol=1e-4, gatol=None, **kw):
    ref = _run("reference", maps, y, params, ops, **kw)
    tri = _run("triton", maps, y, params, ops, **kw)
    assert_verbose_allclose(tri[0], ref[0], atol=atol, rtol=rtol, name="loss")
    assert_verbose_allclose(tri[1], ref[1], atol=atol, rtol=rtol, name="per-map losses")
    names = [f"grad logits[{i}]" for i in range(len(maps))] + [f"grad {k}" for k in params]
    for name, g_t, g_r in zip(names, tri[2], ref[2]):
        scale = max(g_r.abs().max().item(), 1e-6)
        assert_verbose_allclose(g_t.float(), g_r.float(), atol=(gatol or 1e-5) * scale, rtol=rtol, name=name)
    return tri


ALL = ("add", "mul", "concat", "attention")


@pytest.mark.parametrize("M,B,C,size,ops,kw", [
    pytest.param(2, 2, 3, (9, 11), ALL, LOMIX, id="2d-M2-all-ops-lomix"),
    pytest.param(4, 1, 3, (7, 9), ALL, LOMIX, id="2d-M4-all-ops-lomix"),
    pytest.param(3, 2, 4, (5, 6, 7), ("concat", "attention"),
                 dict(ce_weight=1.0, dice_weight=1.0, squared=False, batch=False, include_background=False,
                      smooth_nr=0.0, smooth_dr=1e-5), id="3d-M3-concat-attn-persample-nobg-plain"),
    pytest.param(5, 1, 3, (6, 5), ("add",), dict(weight_mode="normalized"), id="2d-M5-add-normalized"),
    pytest.param(3, 2, 3, (4, 5, 6), ("mul",), dict(weight_mode="fixed"), id="3d-M3-mul-fixed"),
    pytest.param(5, 1, 2, (3, 4), ("add", "attention"), LOMIX, id="2d-M5-add-attn"),
    pytest.param(7, 1, 2, (3, 3), ("mul",), dict(weight_mode="normalized"), id="2d-M7-mul-normalized"),
    pytest.param(8, 2, 3, (2, 3, 3), (), dict(weight_mode="fixed", batch=False), id="3d-M8-deep-supervision"),
])
def test_parity_with_reference(M, B, C, size, ops, kw):
    maps, y, params = _problem(M, B, C, [size] * M, size, ops)
    _compare(maps, y, params, ops, **kw)


def test_multi_tile_multi_chunk_and_tails(monkeypatch):
    """GPU launch settings on a 1-SM "device": two programs per sample (B=2), each walking several
    64-voxel tiles, the last one partial (3D, 2 maps, 210 voxels per sample)."""
    monkeypatch.setattr(dispatch, "DEFAULT_SM_COUNT", 1)
    maps, y, params = _problem(2, 2, 3, [(5, 6, 7)] * 2, (5, 6, 7), ("mul",))
    with force_launch_settings("gpu"):
        _compare(maps, y, params, ("mul",), batch=False)


def test_all_maps_reach_the_kernels_without_fallback(recwarn):
    """No cap on the number of maps and no eager fallback warning (9 maps)."""
    maps, y, params = _problem(9, 1, 2, [(2, 3)] * 9, (2, 3), ())
    _compare(maps, y, params, (), weight_mode="fixed")
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


def test_mixed_resolution_upsampling():
    """Coarse maps (1/4, 1/2) upsampled to the labels, as decoder heads at native resolution."""
    sizes = [(2, 3), (4, 6), (8, 12)]
    maps, y, params = _problem(3, 2, 3, sizes, (8, 12), ("add", "concat"), label_dtype=torch.uint8)
    _compare(maps, y, params, ("add", "concat"), **LOMIX)


def test_sigmoid_binary_lgmsnet_style():
    maps, _, params = _problem(2, 2, 1, [(9, 11)] * 2, (9, 11), ("add", "mul"))
    y = torch.randint(0, 2, (2, 9, 11))
    _compare(maps, y, params, ("add", "mul"), sigmoid=True, squared=False, batch=False, ce_weight=0.5,
             dice_weight=1.0)


def test_fp16_logits_fp32_accumulation():
    maps, y, params = _problem(2, 2, 3, [(9, 11)] * 2, (9, 11), ("add", "attention"), dtype=torch.float16)
    ref_maps = [m.detach().float().requires_grad_() for m in maps]
    ref = _run("reference", ref_maps, y, params, ("add", "attention"), **LOMIX)
    tri = _run("triton", maps, y, params, ("add", "attention"), **LOMIX)
    assert tri[2][0].dtype == torch.float16
    assert_verbose_allclose(tri[0], ref[0], atol=1e-5, rtol=1e-5, name="loss")
    for i in range(2):
        scale = ref[2][i].abs().max().item()
        assert_verbose_allclose(tri[2][i].float(), ref[2][i], atol=2e-3 * scale, rtol=1e-2, name=f"grad logits[{i}]")


def test_deterministic_bitwise():
    maps, y, params = _problem(2, 2, 3, [(9, 11)] * 2, (9, 11), ("concat", "attention"))
    a = _run("triton", maps, y, params, ("concat", "attention"), **LOMIX)
    b = _run("triton", maps, y, params, ("concat", "attention"), **LOMIX)
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[2], b[2]):
        assert torch.equal(ga, gb)


def test_stacked_logits_and_b1_target():
    maps, y, params = _problem(2, 2, 3, [(6, 7)] * 2, (6, 7), ())
    stacked = torch.stack([m.detach() for m in maps])
    with force_backend("triton"):
        a = multi_logit_dice_ce(stacked, y[:, None], params["raw_weights"].detach())
    with force_backend("reference"):
        b = multi_logit_dice_ce([m.detach() for m in maps], y, params["raw_weights"].detach())
    assert_verbose_allclose(a, b, atol=1e-6, rtol=1e-5, name="loss")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("bad", ["label_high", "label_negative", "nan_logits"])
def test_bad_values_raise(backend, bad):
    maps = [torch.randn(2, 3, 6, 7) for _ in range(2)]
    y = torch.randint(0, 3, (2, 6, 7))
    if bad == "label_high":
        y[1, 2, 3] = 3
        match = "target holds"
    elif bad == "label_negative":
        y[0, 0, 0] = -1
        match = "target holds"
    else:
        maps[1][0, 1, 2, 2] = float("nan")
        match = r"logits\[1\] contains"
    with force_backend(backend), pytest.raises(ValueError, match=match):
        multi_logit_dice_ce(maps, y, torch.zeros(2))


def test_bad_shapes_raise():
    y = torch.randint(0, 3, (2, 8, 12))
    with pytest.raises(ValueError, match=r"logits\[1\] spatial size"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12), torch.randn(2, 3, 3, 5)], y, torch.zeros(2))
    with pytest.raises(ValueError, match="raw_weights must have shape"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 3, y, torch.zeros(2), ops=("add",))
    with pytest.raises(ValueError, match="a float target holds one-hot / soft targets and must be \\(B, C"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12)], y.float(), torch.zeros(1))
    with pytest.raises(TypeError, match="target must have dtype in \\(uint8"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12)], y.bool(), torch.zeros(1))
    with pytest.raises(ValueError, match="ops must be one of"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 2, y, torch.zeros(3), ops=("ad",))
    with pytest.raises(ValueError, match="concat_weight is required"):
        multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 2, y, torch.zeros(3), ops=("concat",))


def test_torch_compile_fullgraph_no_graph_break():
    """The registered custom ops (with fake implementations) let dynamo trace the loss in one graph."""
    maps, y, params = _problem(2, 2, 3, [(6, 7)] * 2, (6, 7), ("add", "mul"))

    def f(maps, y, w):
        return multi_logit_dice_ce(maps, y, w, ops=("add", "mul"))

    with force_backend("triton"):
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        got = compiled(maps, y, params["raw_weights"])
        (g_c,) = torch.autograd.grad(got, [params["raw_weights"]])
        want = f(maps, y, params["raw_weights"])
        (g_e,) = torch.autograd.grad(want, [params["raw_weights"]])
    assert_verbose_allclose(got, want, atol=1e-6, rtol=1e-6, name="loss")
    assert_verbose_allclose(g_c, g_e, atol=1e-6, rtol=1e-6, name="grad raw_weights")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=cuda_marks())])
def test_torch_compile_fullgraph_cuda(device):
    """The compiled Triton path on a GPU (inductor, fullgraph) matches the eager Triton path."""
    maps, y, params = make_problem(4, 2, 9, [(40, 48)] * 4, (40, 48), ALL, device=device, label_dtype=torch.uint8)
    kw = {k: v for k, v in params.items() if k != "raw_weights"}

    def f(maps, y, w):
        return multi_logit_dice_ce(maps, y, w, ops=ALL, **kw, **LOMIX)

    compiled = torch.compile(f, fullgraph=True)
    got, want = compiled(maps, y, params["raw_weights"]), f(maps, y, params["raw_weights"])
    g_c = torch.autograd.grad(got, maps)
    g_e = torch.autograd.grad(want, maps)
    assert_verbose_allclose(got, want, atol=1e-5, rtol=1e-5, name="loss")
    for i, (a, b) in enumerate(zip(g_c, g_e)):
        assert_verbose_allclose(a, b, atol=1e-6, rtol=1e-5, name=f"grad logits[{i}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=cuda_marks())])
def test_deterministic_bitwise_on_device(device, dtype):
    """Many programs (B=4, 4 maps, 9 classes, 96x128 at the GPU settings): two runs, bitwise equal."""
    maps, y, params = make_problem(4, 4, 9, [(96, 128)] * 4, (96, 128), ALL, dtype=dtype, device=device,
                                   label_dtype=torch.uint8)
    a = _run("triton", maps, y, params, ALL, **LOMIX)
    b = _run("triton", maps, y, params, ALL, **LOMIX)
    assert_bitwise_equal(a[0], b[0], "loss")
    for i, (ga, gb) in enumerate(zip(a[2], b[2])):
        assert_bitwise_equal(ga, gb, f"grad {i}")
