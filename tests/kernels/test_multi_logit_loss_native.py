"""The fused loss at the decoders' native resolutions (issue 12): coarse maps are read at their own
resolution and upsampled in registers, their gradients written at their own resolution, against the eager
reference (``F.interpolate``, bilinear / trilinear ``align_corners=False`` or nearest).

Interpreter settings (one program and one tile per sample) and GPU launch settings on a small "device"
(several programs per sample, tiles of 16-64 voxels: the per-program fp32 slabs, the read-add-write of
cells touched by several tiles, and the gather kernel) both run here; every test runs under the suite's
memory sanitizer and NaN-poisoned allocations.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import dispatch, force_backend, force_launch_settings
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.geometry import (cells_per_tile, gather_radius, make_geometry, slab_extent,
                                                       source_cells, tile_shape)
from segfuse.kernels.multi_logit_loss.specs import make_problem
from segfuse.testing import assert_bitwise_equal, assert_verbose_allclose, cuda_marks

LOMIX = dict(ce_weight=0.3, dice_weight=0.7, squared=True, batch=True, include_background=True)
ALL = ("add", "mul", "concat", "attention")


def _problem(M, B, C, sizes, target_size, ops, dtype=torch.float32, label_dtype=torch.int64, **kw):
    return make_problem(M, B, C, sizes, target_size, ops, dtype=dtype, label_dtype=label_dtype,
                        seed=int(torch.randint(0, 2 ** 31, ()).item()), **kw)


def _run(backend, maps, y, params, ops, **kw):
    with force_backend(backend):
        loss, per_map = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=ops, return_per_map=True,
                                            **{k: v for k, v in params.items() if k != "raw_weights"}, **kw)
        grads = torch.autograd.grad(loss, list(maps) + list(params.values()))
    return loss, per_map, grads


def _compare(maps, y, params, ops, gatol=1e-5, rtol=1e-4, ref_maps=None, **kw):
    """Triton (interpreter) against the reference: loss, per-map losses, every map's gradient (at the map's own
    resolution), the raw weights' and the mixing parameters' gradients."""
    ref = _run("reference", ref_maps or maps, y, params, ops, **kw)
    tri = _run("triton", maps, y, params, ops, **kw)
    assert_verbose_allclose(tri[0], ref[0], atol=1e-5, rtol=1e-5, name="loss")
    assert_verbose_allclose(tri[1], ref[1], atol=1e-5, rtol=1e-5, name="per-map losses")
    names = [f"grad logits[{i}]" for i in range(len(maps))] + [f"grad {k}" for k in params]
    for name, g_t, g_r, *x in zip(names, tri[2], ref[2], list(maps) + [None] * len(params)):
        if x[0] is not None:
            assert g_t.shape == x[0].shape and g_t.dtype == x[0].dtype, name
        scale = max(g_r.abs().max().item(), 1e-6)
        assert_verbose_allclose(g_t.float(), g_r.float(), atol=gatol * scale, rtol=rtol, name=name)
    return tri


def _sizes(target, factors):
    """Map sizes: the target size divided by each factor (an int, or one per axis)."""
    return [tuple(n // f for n, f in zip(target, (s,) * len(target) if isinstance(s, int) else s)) for s in factors]


# ----------------------------------------------------------------------------- parity, interpreter settings
def test_scale_factors_1_to_32_on_a_non_power_of_two_size():
    """96 x 160 labels (multiples of 32, not powers of two), 6 maps at 1/32 .. 1/1."""
    target = (96, 160)
    sizes = _sizes(target, (32, 16, 8, 4, 2, 1))
    maps, y, params = _problem(6, 1, 3, sizes, target, (), label_dtype=torch.uint8)
    _compare(maps, y, params, (), weight_mode="normalized")


def test_lomix_all_operators_at_native_resolutions():
    """EMCAD-style heads at 1/8 .. 1/1, every LoMix operator (concat takes coarse members' class rows from
    their upsampled register tiles)."""
    target = (16, 24)
    maps, y, params = _problem(4, 1, 4, _sizes(target, (8, 4, 2, 1)), target, ALL)
    _compare(maps, y, params, ALL, **LOMIX)


def test_3d_isotropic_and_anisotropic_factors():
    target = (8, 12, 16)
    sizes = _sizes(target, (4, (1, 2, 2), (2, 2, 4), 1))
    maps, y, params = _problem(4, 1, 3, sizes, target, ("mul", "concat"))
    _compare(maps, y, params, ("mul", "concat"), squared=False, batch=False, include_background=False)


def test_odd_scale_one_maps_and_factor_three():
    """9 x 15 labels: a map at factor 3, an odd-sized map at factor 1, an anisotropic (1, 3) map."""
    target = (9, 15)
    sizes = [(3, 5), (9, 15), (9, 5)]
    maps, y, params = _problem(3, 2, 3, sizes, target, ("attention",))
    _compare(maps, y, params, ("attention",), **LOMIX)


@pytest.mark.parametrize("sigmoid", [False, True], ids=["softmax", "sigmoid-binary"])
def test_a_single_coarse_map(sigmoid):
    C = 1 if sigmoid else 3
    maps, y, params = _problem(1, 2, C, [(4, 6)], (16, 24), (), labels_hi=2 if sigmoid else None)
    _compare(maps, y, params, (), sigmoid=sigmoid, squared=False, batch=False, weight_mode="fixed")


def test_eight_maps_deep_supervision():
    target = (16, 24)
    maps, y, params = _problem(8, 1, 2, _sizes(target, (8, 8, 4, 4, 2, 2, 1, 1)), target, ())
    _compare(maps, y, params, (), weight_mode="fixed", batch=False)


@pytest.mark.parametrize("target,factors", [((12, 20), (4, 2, 1)), ((4, 8, 12), (4, (1, 2, 2), 1))],
                         ids=["2d", "3d"])
def test_nearest_upsampling(target, factors):
    maps, y, params = _problem(3, 2, 3, _sizes(target, factors), target, ("add",))
    _compare(maps, y, params, ("add",), upsample="nearest", weight_mode="fixed")


def test_fp16_logits_at_native_resolutions():
    """fp16 maps: pass 2 adds into fp32 slabs, the gather kernel writes the fp16 gradients."""
    target = (16, 24)
    maps, y, params = _problem(3, 2, 3, _sizes(target, (4, 2, 1)), target, ("add", "attention"),
                               dtype=torch.float16)
    ref_maps = [m.detach().float().requires_grad_() for m in maps]
    _compare(maps, y, params, ("add", "attention"), gatol=2e-3, rtol=1e-2, ref_maps=ref_maps, **LOMIX)


# ----------------------------------------------------------------------------- GPU launch settings
GPU_CASES = {  # (labels, factors, ops, batch, classes, options)
    "2d-scales-8-4-2-1": ((16, 48), (8, 4, 2, 1), (), 2, 2, {}),
    "2d-one-tile-programs": ((16, 48), (8, 4, 2, 1), (), 1, 2, {}),
    "3d-anisotropic": ((4, 8, 24), (4, (1, 2, 2), 1), (), 2, 2, {}),
    "2d-factor-3-nearest": ((12, 36), (3, (1, 3), 1), (), 2, 2, dict(upsample="nearest")),
    "2d-factors-6-3-concat": ((12, 18), (6, 3), ("concat",), 2, 3, {}),
}


@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_launch_settings_several_programs_per_sample(case, monkeypatch):
    """GPU tiles (64-128 voxels at 2-4 classes) on a 1-SM "device" (4 programs, split between the samples):
    several programs per sample, each adding its tiles into its own fp32 slab (cells an earlier tile touched
    are read, added to and written back), then the fixed-order gather."""
    target, factors, ops, B, C, kw = GPU_CASES[case]
    monkeypatch.setattr(dispatch, "DEFAULT_SM_COUNT", 1)
    maps, y, params = _problem(len(factors), B, C, _sizes(target, factors), target, ops)
    geo = make_geometry([m.shape[2:] for m in maps], target, 256 // max(2, C), -(-4 // B), False)
    assert geo.boxes > 1 and (math.prod(geo.box) > 1 or B == 1), geo  # several programs, several tiles each
    with force_launch_settings("gpu"):
        _compare(maps, y, params, ops, weight_mode="fixed", **kw)


def test_gradients_bitwise_reproducible(monkeypatch):
    """Two runs give bitwise equal gradients with several programs per sample (slabs + gather; no atomics
    into shared locations), LoMix's concat and attention included."""
    target = (8, 24)
    monkeypatch.setattr(dispatch, "DEFAULT_SM_COUNT", 1)
    maps, y, params = _problem(2, 2, 3, _sizes(target, (4, 2)), target, ("concat", "attention"))
    with force_launch_settings("gpu"):
        a = _run("triton", maps, y, params, ("concat", "attention"), **LOMIX)
        b = _run("triton", maps, y, params, ("concat", "attention"), **LOMIX)
    assert_bitwise_equal(a[0], b[0], "loss")
    for i, (ga, gb) in enumerate(zip(a[2], b[2])):
        assert_bitwise_equal(ga, gb, f"grad {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=cuda_marks())])
def test_native_resolution_on_device(device, dtype):
    """GPU tier: EMCAD-style heads at 1/32 .. 1/4 of 96 x 160 labels, every LoMix operator, against the fp32
    reference, and bitwise stable over two runs."""
    target = (96, 160)
    maps, y, params = make_problem(4, 2, 9, _sizes(target, (32, 16, 8, 4)), target, ALL, dtype=dtype,
                                   device=device, label_dtype=torch.uint8)
    ref_maps = [m.detach().float().requires_grad_() for m in maps]
    ref = _run("reference", ref_maps, y, params, ALL, **LOMIX)
    a = _run("triton", maps, y, params, ALL, **LOMIX)
    b = _run("triton", maps, y, params, ALL, **LOMIX)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert_verbose_allclose(a[0], ref[0], atol=tol, rtol=tol, name="loss")
    for i, (g, r) in enumerate(zip(a[2], ref[2])):
        assert_verbose_allclose(g.float(), r.float(), atol=tol * max(r.abs().max().item(), 1e-6), rtol=max(tol, 1e-4),
                                name=f"grad {i}")
    for i, (ga, gb) in enumerate(zip(a[2], b[2])):
        assert_bitwise_equal(ga, gb, f"grad {i}")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_nan_in_a_coarse_map_is_counted_once_per_element(backend):
    maps = [torch.randn(2, 3, 2, 3), torch.randn(2, 3, 8, 12)]
    maps[0][1, 2, 1, 2] = float("nan")
    maps[0][0, 0, 0, 0] = float("inf")
    y = torch.randint(0, 3, (2, 8, 12))
    with force_backend(backend), pytest.raises(ValueError, match=r"logits\[0\] contains 2 NaN or Inf values"):
        multi_logit_dice_ce(maps, y, torch.ones(2))


# ----------------------------------------------------------------------------- geometry
def test_source_index_rule_is_f_interpolate():
    """The integer rule of geometry.py (``i0``, ``i1``; nearest ``c // s``) rebuilds ``F.interpolate`` exactly
    for every factor up to 32 (the weight is PyTorch's fp32 ``src - i0``)."""
    for s in list(range(2, 9)) + [12, 16, 32]:
        n = 5
        x = torch.randn(1, 1, n, dtype=torch.float64)
        c = torch.arange(n * s)
        i0 = torch.tensor([source_cells(int(k), n, s, False)[0] for k in c])
        i1 = torch.tensor([source_cells(int(k), n, s, False)[1] for k in c])
        src = ((c.to(torch.float32) + 0.5) * (1.0 / s) - 0.5).clamp(min=0)
        lam = (src - i0.to(torch.float32)).double()
        ours = x[0, 0, i0] * (1 - lam) + x[0, 0, i1] * lam
        assert torch.allclose(ours, F.interpolate(x, scale_factor=s, mode="linear", align_corners=False)[0, 0],
                              atol=1e-6), s
        near = torch.tensor([source_cells(int(k), n, s, True)[0] for k in c])
        assert torch.equal(x[0, 0, near], F.interpolate(x, size=n * s, mode="nearest")[0, 0]), s


@pytest.mark.parametrize("nearest", [False, True])
def test_tile_and_slab_bounds(nearest):
    """Brute force: every run of ``t`` fine coordinates touches at most ``cells_per_tile(t, s)`` cells, every box
    of ``L`` at most ``slab_extent``; the gather radius covers every box that touches a cell (asserted inside)."""
    for s in (2, 3, 4, 5, 8, 32):
        for n in (1, 2, 3, 7):
            N = n * s
            for t in (1, 2, 4, 8, 16, 32):
                for a in range(N):
                    e = min(a + t, N) - 1
                    span = source_cells(e, n, s, nearest)[1] - source_cells(a, n, s, nearest)[0] + 1
                    assert span <= cells_per_tile(t, s), (s, n, t, a)
                    assert span <= slab_extent(n, t, s), (s, n, t, a)
            for L in (s, 2 * s, 3 * s + 1):
                assert 1 <= gather_radius(N, s, L, nearest) <= 3  # boxes at least as long as the factor
    assert tile_shape(16, (1, 224, 224)) == (1, 4, 4)
    assert math.prod(tile_shape(1 << 20, (1, 224, 224))) >= 224 * 224  # the interpreter: one tile per sample


# ----------------------------------------------------------------------------- traffic
@pytest.mark.parametrize("ignore_index", [None, 255], ids=["all-voxels", "ignore-label"])
def test_traffic_reads_and_writes_each_map_at_its_own_resolution(ignore_index):
    """Per-program bytes of the fused path on EMCAD-style heads (1/8 .. 1/1 of 64 x 64, 4 classes, add + mul:
    no mixing parameters): forward + backward within 1.6x of the minimum (read every map at its own
    resolution and the labels once; write every map's gradient once), and the backward writes no more than
    the gradients plus a few hundred bytes (nothing at full resolution besides the full-resolution map). An
    ignore label costs no traffic but one count per program."""
    from segfuse.bench.traffic import InterpreterTraffic

    target = (64, 64)
    maps, y, params = _problem(4, 1, 4, _sizes(target, (8, 4, 2, 1)), target, ("add", "mul"),
                               label_dtype=torch.uint8)
    if ignore_index is not None:
        y.view(-1)[::3] = ignore_index
    map_bytes = sum(m.numel() * 4 for m in maps)
    with force_backend("triton"):
        with InterpreterTraffic() as fwd:
            loss = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=("add", "mul"), ignore_index=ignore_index)
        with InterpreterTraffic() as bwd:
            torch.autograd.grad(loss, maps)
    minimum = 2 * map_bytes + y.numel()
    total = fwd.result.per_program + bwd.result.per_program
    assert total / minimum < 1.6, (fwd.result, bwd.result, minimum)
    assert bwd.result.store_per_program < map_bytes + 512, (bwd.result, map_bytes)
    assert bwd.result.launches == 1  # pass 2 only: no gather, no upsampling kernels
