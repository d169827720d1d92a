"""The loss modules' ``validate`` option (no host sync after the first call by default) and
``torch.compile(fullgraph=True)`` over them on both paths (issue 12)."""
import pytest
import torch
import torch._dynamo

from segfuse.kernels import force_backend
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, FIASLoss, LoMixLoss
from segfuse.testing import assert_verbose_allclose

BACKENDS = ["reference", "triton"]


def _native_maps(C=3, B=2, sizes=((2, 3), (4, 6), (8, 12)), seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, C, *s, generator=g).requires_grad_() for s in sizes]
    y = torch.randint(0, C, (B, *sizes[-1]), generator=g)
    return maps, y


def _modules(C=3):
    return {"LoMixLoss": lambda: LoMixLoss(3, C, 2), "DeepSupervisionDiceCE": lambda: DeepSupervisionDiceCE(3),
            "DiceCELoss": lambda: DiceCELoss(), "FIASLoss": lambda: FIASLoss(3)}


def _call(name, mod, maps, y):
    return mod(maps[-1], y) if name == "DiceCELoss" else mod(maps, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["LoMixLoss", "DeepSupervisionDiceCE", "DiceCELoss", "FIASLoss"])
def test_validate_first_call_only_by_default(name, backend):
    """Default "first": the first call raises with the details; later calls do not read the counters back
    (on CUDA they would assert asynchronously; on CPU nothing is checked); ``validate=True`` checks every call.
    The fault: one NaN in every map (counted once per element of the map, at the map's own resolution)."""
    maps, y = _native_maps()
    bad = [m.detach().clone() for m in maps]
    for m in bad:
        m[0, 1, 1, 1] = float("nan")
    match = r"logits\[0\] contains 1 NaN or Inf values"
    with force_backend(backend):
        mod = _modules()[name]()
        with pytest.raises(ValueError, match=match):
            _call(name, mod, bad, y)
        mod = _modules()[name]()
        _call(name, mod, maps, y)  # the first call validates good input
        assert torch.isnan(_call(name, mod, bad, y))  # later calls: nothing read back, the loss is NaN
        mod.validate = True
        with pytest.raises(ValueError, match=match):
            _call(name, mod, bad, y)


def test_validate_option_values():
    maps, y = _native_maps()
    with pytest.raises(ValueError, match="validate must be one of"):
        LoMixLoss(3, 3, 2, validate="sometimes")
    with pytest.raises(ValueError, match="'first' is an option of the loss modules"):
        multi_logit_dice_ce(maps, y, torch.ones(3), validate="first")
    with force_backend("triton"):
        bad = y.clone()
        bad[1, 2, 3] = -1
        assert torch.isfinite(multi_logit_dice_ce(maps, bad, torch.ones(3), validate="async"))  # CPU: no check
        assert torch.isfinite(multi_logit_dice_ce(maps, bad, torch.ones(3), validate=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_trace_without_graph_breaks(backend):
    """``torch.compile(fullgraph=True)`` (which fails on any graph break) over LoMixLoss, DiceCELoss and
    DeepSupervisionDiceCE, coarse maps at their native resolutions, the default validate="first": the
    compiled module matches the eager one (LoMixLoss over two calls: the validating first one and a later one,
    which reads nothing back and is a second graph)."""
    maps, y = _native_maps()
    with force_backend(backend):
        for name in ("LoMixLoss", "DiceCELoss", "DeepSupervisionDiceCE"):
            torch._dynamo.reset()
            eager, compiled = _modules()[name](), _modules()[name]()
            compiled.load_state_dict(eager.state_dict())
            fn = torch.compile(compiled, backend="aot_eager", fullgraph=True)
            for _ in range(2 if name == "LoMixLoss" else 1):  # LoMix: the validating call, then a later one
                want = _call(name, eager, maps, y)
                got = _call(name, fn, maps, y)
                assert_verbose_allclose(got, want, atol=1e-6, rtol=1e-5, name=f"{name} loss")
                g_w = torch.autograd.grad(want, maps, allow_unused=True)
                g_c = torch.autograd.grad(got, maps, allow_unused=True)
                for i, (a, b) in enumerate(zip(g_c, g_w)):
                    if b is not None:
                        assert_verbose_allclose(a, b, atol=1e-7, rtol=1e-5, name=f"{name} grad logits[{i}]")
            assert compiled._validated and eager._validated


def test_compiled_lgmsnet_lomix_training_step_matches_eager():
    """LGMSNet (deep supervision: 4 maps at strides 8, 4, 2, 1) + LoMix, one training step (forward, backward,
    every gradient) captured whole by ``torch.compile(fullgraph=True)`` equals the eager step. Eager reference
    path and dynamo's eager backend (on CPU the interpreted depthwise-conv kernels of LGMSNet would take
    minutes, and AOTAutograd over the whole network tens of seconds; the fused loss under AOTAutograd is
    covered on both paths above)."""
    from segfuse.models import create_model

    torch.manual_seed(0)
    net = create_model("lgmsnet", spatial_dims=2, in_channels=1, num_classes=3, deep_supervision=True).train()
    loss_fn = LoMixLoss(4, 3, 2)
    x = torch.randn(1, 1, 32, 32)
    y = torch.randint(0, 3, (1, 32, 32))
    params = list(net.parameters()) + list(loss_fn.parameters())

    def step(x, y):
        return loss_fn(net(x), y)

    with force_backend("reference"):
        torch._dynamo.reset()
        want = step(x, y)
        g_want = torch.autograd.grad(want, params)
        compiled = torch.compile(step, backend="eager", fullgraph=True)  # the capture (aot_eager: the modules above)
        got = compiled(x, y)
        g_got = torch.autograd.grad(got, params)
    assert_verbose_allclose(got, want, atol=1e-5, rtol=1e-5, name="loss")
    scale = max(g.abs().max().item() for g in g_want)  # some gradients are ~0 (biases before a norm)
    for i, (a, b) in enumerate(zip(g_got, g_want)):
        assert_verbose_allclose(a, b, atol=1e-5 * scale, rtol=1e-4, name=f"grad {i}")
