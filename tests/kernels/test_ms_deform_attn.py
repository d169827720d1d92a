"""Multi-scale deformable attention: Triton kernels (interpreter / GPU) against the grid_sample reference,
forward and all three gradients, 2D and 3D; the deterministic grad_value path; torch.compile; bad inputs
(same exception on both backends); the module."""
import math

import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.kernels.ms_deform_attn import (MultiScaleDeformableAttention, ms_deform_attn,
                                            ms_deform_attn_reference)
from segfuse.kernels.ms_deform_attn.specs import level_start_index, make_problem, run_problem
from segfuse.testing import (assert_verbose_allclose, cuda_marks, device_dtype_params, exception_on_backend,
                             tolerance)

# (N, Q, M, Dh, level shapes, P): odd / non-power-of-two levels, 1x1(x1) levels, Dh = 24 (not a power of 2)
PROBLEMS = {
    "2d-L1-P1-D8": (1, 3, 1, 8, [(3, 5)], 1),
    "2d-L3-P2-D24": (2, 5, 2, 24, [(5, 7), (3, 3), (1, 2)], 2),
    "2d-L5-P4-D16": (1, 4, 2, 16, [(6, 5), (4, 3), (2, 3), (2, 1), (1, 1)], 4),
    "3d-L2-P3-D16": (1, 4, 2, 16, [(3, 4, 5), (1, 2, 3)], 3),
    "3d-L3-P1-D32": (1, 3, 1, 32, [(2, 3, 4), (2, 2, 2), (1, 1, 1)], 1),
}


def _compare(got, want, dtype, what):
    names = ("output", "grad value", "grad sampling_locations", "grad attention_weights")
    for name, a, e in zip(names, got, want):
        atol, rtol = tolerance(dtype, scale=max(e.abs().max().item(), 1e-3))
        assert_verbose_allclose(a.float(), e.float(), atol, rtol, f"{what}: {name}")


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_matches_reference(name, deterministic, device, dtype):
    N, Q, M, Dh, shapes, P = PROBLEMS[name]
    with force_backend("triton"):
        got = run_problem(*_args(N, Q, M, Dh, shapes, P, dtype, device, deterministic))
    with force_backend("reference"):
        want = run_problem(*_args(N, Q, M, Dh, shapes, P, torch.float32, device, deterministic))
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
    _compare(got, want, dtype, name)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", ["2d-L3-P2-D24", "3d-L2-P3-D16"])
def test_fused_softmax_matches_reference(name, deterministic, device, dtype):
    """softmax=True: the weights are logits, softmaxed over L x P inside the kernels (fwd and bwd)."""
    N, Q, M, Dh, shapes, P = PROBLEMS[name]
    with force_backend("triton"):
        got = run_problem(*_args(N, Q, M, Dh, shapes, P, dtype, device, deterministic), softmax=True)
    with force_backend("reference"):
        want = run_problem(*_args(N, Q, M, Dh, shapes, P, torch.float32, device, deterministic), softmax=True)
    _compare(got, want, dtype, name + " softmax")
    # the same as softmax outside the op, differentiated by autograd
    v, loc, logits, go = make_problem(N, Q, M, Dh, shapes, P, dtype=torch.float32, device=device)
    with force_backend("reference"):
        w = logits.view(N, Q, M, -1).softmax(-1).view(logits.shape)
        unfused = run_problem(v, shapes, loc, w, go, deterministic)[:3] + (
            torch.autograd.grad(ms_deform_attn(v, shapes, None, loc, w), logits, go)[0],)
    _compare(got, unfused, dtype, name + " softmax vs unfused")


def _args(N, Q, M, Dh, shapes, P, dtype, device, deterministic, seed=0):
    v, loc, a, go = make_problem(N, Q, M, Dh, shapes, P, dtype=dtype, device=device, seed=seed)
    return v, shapes, loc, a, go, deterministic


def test_points_outside_and_on_borders():
    """Samples wholly outside (loc < -0.5/size or > 1 + 0.5/size), exactly on the borders 0 / 1 and on the
    last in-range half pixel: Triton equals the reference, and wholly-outside samples give exactly 0."""
    shapes = [(3, 4), (2, 5)]
    v, loc, a, go = make_problem(1, 6, 1, 8, shapes, 2)
    with torch.no_grad():
        loc[0, 0] = -0.7          # query 0: every sample outside, both axes
        loc[0, 1, ..., 0] = 1.4   # query 1: outside in x only
        loc[0, 2] = 0.0           # on the lower border: ix = -0.5
        loc[0, 3] = 1.0           # on the upper border: ix = size - 0.5
        loc[0, 4, ..., 1] = -0.1  # partly outside in y
    with force_backend("triton"):
        got = run_problem(v, shapes, loc, a, go, False)
    with force_backend("reference"):
        want = run_problem(v, shapes, loc, a, go, False)
    _compare(got, want, torch.float32, "borders")
    assert got[0][0, :2].abs().max().item() == 0.0
    assert got[2][0, :2].abs().max().item() == 0.0 and got[3][0, :2].abs().max().item() == 0.0


def test_reference_axis_order_3d():
    """The reference samples value at (x, y, z) = (W, H, D): a voxel centre hits that voxel exactly."""
    shapes = [(2, 3, 4)]  # D=2, H=3, W=4
    value = torch.arange(24, dtype=torch.float32).view(1, 24, 1, 1).repeat(1, 1, 1, 8)
    z, y, x = 1, 2, 3
    loc = torch.tensor([(x + 0.5) / 4, (y + 0.5) / 3, (z + 0.5) / 2]).view(1, 1, 1, 1, 1, 3)
    attn = torch.ones(1, 1, 1, 1, 1)
    expect = float((z * 3 + y) * 4 + x)
    assert ms_deform_attn_reference(value, shapes, loc, attn)[0, 0, 0].item() == expect
    with force_backend("triton"):
        assert ms_deform_attn(value, shapes, [0], loc, attn)[0, 0, 0].item() == expect


def test_reference_is_grid_sample_2d():
    """2D reference = Deformable-DETR's per-level grid_sample formulation, checked on one level directly."""
    v, loc, a, _ = make_problem(1, 4, 1, 8, [(3, 5)], 2)
    got = ms_deform_attn_reference(v.detach(), [(3, 5)], loc.detach(), a.detach())
    img = v.detach()[0, :, 0].t().reshape(1, 8, 3, 5)
    s = F.grid_sample(img, 2 * loc.detach()[0, :, 0, 0][None] - 1, mode="bilinear", padding_mode="zeros",
                      align_corners=False)  # (1, 8, Q, P)
    want = (s * a.detach()[0, :, 0, 0][None, None]).sum(-1)[0].t()
    torch.testing.assert_close(got[0], want)


def test_spatial_shapes_as_tensor():
    shapes = [(4, 5), (2, 3)]
    v, loc, a, go = make_problem(1, 3, 2, 8, shapes, 2)
    with force_backend("triton"):
        out1 = ms_deform_attn(v, torch.tensor(shapes), torch.tensor(level_start_index(shapes)), loc, a)
        out2 = ms_deform_attn(v, shapes, None, loc, a)
    assert torch.equal(out1, out2)


# ----------------------------------------------------------------------------- determinism
def _grads(device, dtype, shapes, N=1, Q=6, M=2, Dh=16, P=4, deterministic=True, seed=3):
    v, loc, a, go = make_problem(N, Q, M, Dh, shapes, P, dtype=dtype, device=device, seed=seed)
    with torch.no_grad():
        loc.mul_(0.2).add_(0.4)  # cluster the samples: many queries add to the same value rows
    return run_problem(v, shapes, loc, a, go, deterministic)


def test_deterministic_bitwise_interpreter():
    shapes = [(3, 3), (1, 2)]
    with force_backend("triton"):
        r1 = _grads("cpu", torch.float32, shapes)
        r2 = _grads("cpu", torch.float32, shapes)
        atomic = _grads("cpu", torch.float32, shapes, deterministic=False)
    for a, b in zip(r1, r2):
        assert torch.equal(a, b)
    _compare(r1, atomic, torch.float32, "deterministic vs atomic")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("device", [pytest.param("cuda", id="cuda", marks=cuda_marks())])
def test_deterministic_bitwise_cuda(device, ndim, dtype):
    """Many programs and heavy contention on the coarse levels: three runs bit-identical."""
    shapes = [(64, 80), (32, 40), (16, 20), (8, 10)] if ndim == 2 else [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    runs = [_grads(device, dtype, shapes, N=2, Q=2000, M=8, Dh=32, P=4) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    atomic = _grads(device, dtype, shapes, N=2, Q=2000, M=8, Dh=32, P=4, deterministic=False)
    _compare(runs[0], atomic, dtype, "deterministic vs atomic")


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "fused-softmax"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_torch_compile_fullgraph(deterministic, softmax):
    shapes = [(2, 3, 4), (1, 2, 2)]
    v, loc, a, go = make_problem(1, 3, 2, 8, shapes, 2)

    def f(v, loc, a):
        return ms_deform_attn(v, shapes, [0, 24], loc, a, deterministic=deterministic, softmax=softmax)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with force_backend("triton"):
        out = compiled(v, loc, a)
        got = (out, *torch.autograd.grad(out, [v, loc, a], go))
        want = run_problem(v, shapes, loc, a, go, deterministic, softmax)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


def test_module_torch_compile_fullgraph():
    torch.manual_seed(0)
    m = MultiScaleDeformableAttention(2, 32, num_levels=2, num_heads=2, num_points=2)
    shapes = [(4, 5), (2, 3)]
    x = torch.randn(1, 26, 32)
    ref = torch.rand(1, 26, 2, 2)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with force_backend("triton"):
        torch.testing.assert_close(compiled(x, ref, x, shapes), m(x, ref, x, shapes))


# ----------------------------------------------------------------------------- bad inputs
def _ok(d=2, D=8, L=2, P=2, N=1, Q=3, M=2):
    shapes = [(4, 5), (2, 3)][:L] if d == 2 else [(2, 3, 4), (1, 2, 2)][:L]
    S = sum(math.prod(s) for s in shapes)
    return dict(value=torch.randn(N, S, M, D), spatial_shapes=shapes, level_start_index=level_start_index(shapes),
                sampling_locations=torch.rand(N, Q, M, L, P, d), attention_weights=torch.rand(N, Q, M, L, P))


def _call(**change):
    def call():
        kw = _ok()
        kw.update(change)
        return ms_deform_attn(kw.pop("value"), kw.pop("spatial_shapes"), kw.pop("level_start_index"),
                              kw.pop("sampling_locations"), kw.pop("attention_weights"), **kw)
    return call


BAD = {
    "loc-last-dim-4": (_call(sampling_locations=torch.rand(1, 3, 2, 2, 2, 4)), ValueError, "sampling_locations"),
    "loc-dim-vs-shapes": (_call(sampling_locations=torch.rand(1, 3, 2, 2, 2, 3)), ValueError, "sampling_locations"),
    "shapes-sum": (_call(spatial_shapes=[(4, 5), (2, 2)]), ValueError, "spatial_shapes"),
    "shapes-bad-row": (_call(spatial_shapes=[(4, 5), (2, 3, 0)]), ValueError, "spatial_shapes"),
    "level-start": (_call(level_start_index=[0, 21]), ValueError, "level_start_index"),
    "level-start-tensor": (_call(level_start_index=torch.tensor([1, 20])), ValueError, "level_start_index"),
    "head-dim-12": (_call(value=torch.randn(1, 26, 2, 12)), ValueError, "value"),
    "head-dim-264": (_call(value=torch.randn(1, 26, 2, 264)), ValueError, "value"),
    "levels-mismatch": (_call(sampling_locations=torch.rand(1, 3, 2, 3, 2, 2)), ValueError, "sampling_locations"),
    "weights-shape": (_call(attention_weights=torch.rand(1, 3, 2, 2, 3)), ValueError, "attention_weights"),
    "device": (_call(sampling_locations=torch.rand(1, 3, 2, 2, 2, 2, device="meta")), ValueError,
               "sampling_locations"),
    "dtype-mismatch": (_call(attention_weights=torch.rand(1, 3, 2, 2, 2, dtype=torch.float16)), ValueError,
                       "attention_weights"),
    "int-value": (_call(value=torch.ones(1, 26, 2, 8, dtype=torch.long)), TypeError, "value"),
    "softmax-flag": (_call(softmax=1), TypeError, "softmax"),
    "value-rank": (_call(value=torch.randn(26, 2, 8)), ValueError, "value"),
    "module-levels": (lambda: MultiScaleDeformableAttention(2, 32, 2, 2, 2)(
        torch.randn(1, 3, 32), torch.rand(1, 3, 2, 2), torch.randn(1, 26, 32), [(4, 5)]), ValueError,
        "spatial_shapes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_same_exception_on_both_backends(name):
    call, expected, arg = BAD[name]
    tri = exception_on_backend("triton", call)
    ref = exception_on_backend("reference", call)
    assert tri[0] is not None, f"{name}: the Triton path raised nothing"
    assert issubclass(tri[0], expected), f"{name}: {tri[0].__name__} is not a {expected.__name__}: {tri[1]}"
    assert arg in tri[1], f"{name}: the message does not name {arg}: {tri[1]}"
    assert tri == ref, f"{name}: triton raised {tri}, reference raised {ref}"


# ----------------------------------------------------------------------------- the module
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_module_init(spatial_dims):
    M, L, P, d = 8, 3, 4, spatial_dims
    m = MultiScaleDeformableAttention(spatial_dims, 64, num_levels=L, num_heads=M, num_points=P)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    assert torch.count_nonzero(m.value_proj.bias) == 0 and torch.count_nonzero(m.output_proj.bias) == 0
    bias = m.sampling_offsets.bias.view(M, L, P, d)
    for h in range(M):
        t = 2 * math.pi * h / M
        u = ([math.cos(t), math.sin(t)] if d == 2
             else [math.cos(t), math.sin(t) * math.cos(t), math.sin(t) * math.sin(t)])
        u = torch.tensor(u) / max(abs(c) for c in u)
        for p in range(P):
            torch.testing.assert_close(bias[h, :, p], (u * (p + 1)).expand(L, d))
    assert bias[..., 0].abs().max().item() == pytest.approx(P)  # points on the unit square, scaled by p + 1


@pytest.mark.parametrize("fused_softmax", [True, False], ids=["fused-softmax", "torch-softmax"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_module_forward_backward(spatial_dims, fused_softmax):
    torch.manual_seed(0)
    shapes = [(5, 6), (3, 3)] if spatial_dims == 2 else [(3, 4, 5), (2, 2, 3)]
    S = sum(math.prod(s) for s in shapes)
    m = MultiScaleDeformableAttention(spatial_dims, 32, num_levels=2, num_heads=4, num_points=3,
                                      fused_softmax=fused_softmax)
    with torch.no_grad():  # non-trivial offsets and weights
        m.sampling_offsets.weight.normal_(0, 0.1)
        m.attention_weights.weight.normal_(0, 0.1)
    x = torch.randn(2, S, 32)
    q = torch.randn(2, 7, 32)
    ref = torch.rand(2, 7, 2, spatial_dims)
    mask = torch.zeros(2, S, dtype=torch.bool)
    mask[1, -5:] = True
    outs = {}
    for backend in ("triton", "reference"):
        m.zero_grad()
        with force_backend(backend):
            y = m(q, ref, x, shapes, level_start_index(shapes), input_padding_mask=mask)
            y.square().sum().backward()
        outs[backend] = (y, *[p.grad.clone() for p in m.parameters()])
    assert outs["triton"][0].shape == (2, 7, 32)
    for a, e in zip(outs["triton"], outs["reference"]):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4)
    # the padding mask zeroes the value: what the masked tokens hold does not change the output
    with force_backend("reference"):
        x2 = x.clone()
        x2[1, -5:] = 1e3
        torch.testing.assert_close(m(q, ref, x2, shapes, input_padding_mask=mask)[1],
                                   m(q, ref, x, shapes, input_padding_mask=mask)[1])


def test_module_fused_softmax_equals_torch_softmax():
    torch.manual_seed(0)
    shapes = [(3, 4, 5), (2, 2, 3)]
    fused = MultiScaleDeformableAttention(3, 16, num_levels=2, num_heads=2, num_points=2)
    plain = MultiScaleDeformableAttention(3, 16, num_levels=2, num_heads=2, num_points=2, fused_softmax=False)
    with torch.no_grad():
        fused.attention_weights.weight.normal_(0, 0.2)
    plain.load_state_dict(fused.state_dict())
    x, q, ref = torch.randn(1, 72, 16), torch.randn(1, 5, 16), torch.rand(1, 5, 2, 3)
    with force_backend("triton"):
        torch.testing.assert_close(fused(q, ref, x, shapes), plain(q, ref, x, shapes))


def test_module_under_autocast_takes_fp32_locations_and_weights():
    """Under autocast the projections come out in half precision while the reference points are fp32: the
    module hands the op fp32 locations and weights (it used to pass mixed dtypes and fail the guard)."""
    attn = MultiScaleDeformableAttention(3, 32, num_levels=2, num_heads=4, num_points=2)
    shapes = [(4, 4, 4), (2, 2, 2)]
    x, q, ref = torch.randn(1, 72, 32), torch.randn(1, 5, 32), torch.rand(1, 5, 3)
    with force_backend("reference"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, ref, x, shapes)
    with force_backend("reference"):
        want = attn(q, ref, x, shapes)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), want, atol=0.1, rtol=0.05)
