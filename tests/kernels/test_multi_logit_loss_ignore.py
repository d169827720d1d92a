"""The fused loss with an ignore label (nnU-Net's ``"ignore"``; ``ignore_index``): voxels with that label count in
neither CE nor any Dice sum, and their logits get a zero gradient. Checked three ways: by construction (a target
whose ignored part is cut away gives the same loss), against the eager reference at native resolutions on both
launch settings, and by the errors a wrong ``ignore_index`` gets."""
import pytest
import torch

from segfuse.kernels import dispatch, force_backend, force_launch_settings
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.specs import make_problem
from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, LoMixLoss
from segfuse.testing import assert_verbose_allclose

LOMIX = dict(ce_weight=0.3, dice_weight=0.7, squared=True, batch=True, include_background=True)
MONAI = dict(ce_weight=1.0, dice_weight=1.0, squared=False, batch=False, include_background=True)


def _with_ignored(y, ignore, frac=0.3, seed=0):
    """``y`` with about ``frac`` of its voxels set to ``ignore``."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(y.shape, generator=g) < frac, torch.full_like(y, ignore), y)


def _run(backend, maps, y, params, ops, **kw):
    with force_backend(backend):
        loss, per_map = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=ops, return_per_map=True,
                                            **{k: v for k, v in params.items() if k != "raw_weights"}, **kw)
        grads = torch.autograd.grad(loss, list(maps) + list(params.values()))
    return loss, per_map, grads


def _compare(maps, y, params, ops, **kw):
    ref = _run("reference", maps, y, params, ops, **kw)
    tri = _run("triton", maps, y, params, ops, **kw)
    assert_verbose_allclose(tri[0], ref[0], atol=1e-5, rtol=1e-5, name="loss")
    assert_verbose_allclose(tri[1], ref[1], atol=1e-5, rtol=1e-5, name="per-map losses")
    for i, (g_t, g_r) in enumerate(zip(tri[2], ref[2])):
        scale = max(g_r.abs().max().item(), 1e-6)
        assert_verbose_allclose(g_t.float(), g_r.float(), atol=1e-5 * scale, rtol=1e-4, name=f"grad {i}")
    return tri


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("opts", [MONAI, LOMIX], ids=["monai-per-sample", "lomix-batch-squared"])
def test_ignored_voxels_are_as_if_cut_away(backend, opts):
    """A target whose right part is ignored gives the loss of the left part alone (no ignore label), and the
    gradient of the left part's logits; the ignored logits get exactly zero gradient, whatever they hold."""
    g = torch.Generator().manual_seed(1)
    B, C, H, W, keep_w = 2, 3, 9, 14, 5
    z = torch.randn(B, C, H, W, generator=g)
    y = torch.randint(0, C, (B, H, W), generator=g)
    y_ign = y.clone()
    y_ign[..., keep_w:] = C
    with force_backend(backend):
        zi = z.clone().requires_grad_()
        loss = multi_logit_dice_ce([zi], y_ign, torch.ones(1), weight_mode="fixed", ignore_index=C, **opts)
        (gi,) = torch.autograd.grad(loss, [zi])
        zc = z[..., :keep_w].clone().requires_grad_()
        loss_cut = multi_logit_dice_ce([zc], y[..., :keep_w].contiguous(), torch.ones(1), weight_mode="fixed",
                                       **opts)
        (gc,) = torch.autograd.grad(loss_cut, [zc])
        z2 = z.clone()
        z2[..., keep_w:] = torch.randn(B, C, H, W - keep_w, generator=g) * 10  # other logits under the ignored part
        loss2 = multi_logit_dice_ce([z2], y_ign, torch.ones(1), weight_mode="fixed", ignore_index=C, **opts)
    assert_verbose_allclose(loss, loss_cut, atol=1e-6, rtol=1e-5, name="loss vs the cut-away target")
    assert_verbose_allclose(loss2, loss, atol=0, rtol=0, name="loss with other logits under ignored voxels")
    assert_verbose_allclose(gi[..., :keep_w], gc, atol=1e-7, rtol=1e-5, name="grad of the kept logits")
    assert torch.equal(gi[..., keep_w:], torch.zeros_like(gi[..., keep_w:])), "ignored voxels got a gradient"


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_everything_ignored_gives_zero_loss_and_gradient(backend):
    z = torch.randn(2, 3, 6, 10, requires_grad=True)
    y = torch.full((2, 6, 10), 3)
    with force_backend(backend):
        loss = multi_logit_dice_ce([z], y, torch.ones(1), weight_mode="fixed", ignore_index=3, **MONAI)
        (g,) = torch.autograd.grad(loss, [z])
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))


CASES = {  # (classes, labels, map factors, ops, label dtype, ignore, options)
    "2d-native-lomix": (3, (16, 24), (4, 2, 1), ("add", "mul", "concat", "attention"), torch.int64, 3, LOMIX),
    "2d-native-monai-uint8-255": (4, (12, 20), (4, 1), (), torch.uint8, 255, MONAI),
    "2d-sigmoid-binary": (1, (10, 14), (2, 1), (), torch.int64, 2, dict(MONAI, sigmoid=True)),
    "3d-anisotropic-negative-ignore": (2, (4, 8, 12), ((1, 2, 2), 1), ("add",), torch.int32, -1, LOMIX),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_an_ignore_label(case):
    C, target, factors, ops, ldt, ignore, opts = CASES[case]
    sizes = [tuple(n // f for n, f in zip(target, (s,) * len(target) if isinstance(s, int) else s)) for s in factors]
    maps, y, params = make_problem(len(factors), 2, C, sizes, target, ops, label_dtype=ldt, seed=7,
                                   labels_hi=2 if C == 1 else C)
    y = _with_ignored(y, ignore)
    _compare(maps, y, params, ops, weight_mode="fixed" if not ops else "softplus", ignore_index=ignore, **opts)


def test_gpu_launch_settings_with_an_ignore_label(monkeypatch):
    """Several programs per sample (fp32 slabs + gather for the coarse maps): the kept-voxel counts of every
    program add up to the CE denominator."""
    monkeypatch.setattr(dispatch, "DEFAULT_SM_COUNT", 1)
    target = (16, 48)
    sizes = [(16 // f, 48 // f) for f in (8, 2, 1)]
    maps, y, params = make_problem(3, 2, 2, sizes, target, (), seed=3)
    y = _with_ignored(y, 2, frac=0.5)
    with force_launch_settings("gpu"):
        _compare(maps, y, params, (), weight_mode="fixed", ignore_index=2, **MONAI)


def test_fp16_logits_with_an_ignore_label():
    maps, y, params = make_problem(2, 2, 3, [(4, 6), (8, 12)], (8, 12), ("mul",), seed=5)
    y = _with_ignored(y, 3)
    half = [m.detach().half().requires_grad_() for m in maps]
    ref = _run("reference", [m.detach().float().requires_grad_() for m in half], y, params, ("mul",),
               ignore_index=3, **LOMIX)
    tri = _run("triton", half, y, params, ("mul",), ignore_index=3, **LOMIX)
    assert_verbose_allclose(tri[0], ref[0], atol=1e-4, rtol=1e-3, name="loss")
    for i in range(2):
        scale = ref[2][i].abs().max().item()
        assert tri[2][i].dtype == torch.float16
        assert_verbose_allclose(tri[2][i].float(), ref[2][i], atol=2e-3 * scale, rtol=1e-2, name=f"grad {i}")


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("ignore", [3, 1, -1], ids=["outside-the-classes", "a-class", "negative"])
@pytest.mark.parametrize("include_background", [True, False])
def test_matches_monai_dice_and_torch_ce_with_ignore_index(backend, ignore, include_background):
    """The Dice term equals MONAI's ``DiceLoss(ignore_index=...)`` (an ignored class included: its Dice is 0) and
    the CE term ``nn.CrossEntropyLoss(ignore_index=...)``."""
    monai_losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 7, 9, generator=g)
    y = _with_ignored(torch.randint(0, 3, (2, 1, 7, 9), generator=g), ignore, seed=5)
    opts = dict(include_background=include_background, squared_pred=False, batch=False)
    want_dice = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, ignore_index=ignore, **opts)(z, y)
    want_ce = torch.nn.functional.cross_entropy(z, y[:, 0], ignore_index=ignore)
    with force_backend(backend):
        dice = DiceCELoss(lambda_ce=0.0, ignore_index=ignore, **opts)(z, y)
        ce = DiceCELoss(lambda_dice=0.0, ignore_index=ignore, **opts)(z, y)
    assert_verbose_allclose(dice, want_dice, atol=1e-6, rtol=1e-5, name="Dice vs MONAI DiceLoss(ignore_index)")
    assert_verbose_allclose(ce, want_ce, atol=1e-6, rtol=1e-5, name="CE vs nn.CrossEntropyLoss(ignore_index)")


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bad_ignore_index_and_labels_outside_it(backend):
    z = torch.randn(1, 3, 4, 4)
    y = torch.randint(0, 3, (1, 4, 4))
    call = dict(raw_weights=torch.ones(1), weight_mode="fixed")
    with force_backend(backend):
        with pytest.raises(TypeError, match="ignore_index must be an int"):
            multi_logit_dice_ce([z], y, ignore_index=3.0, **call)
        with pytest.raises(ValueError, match="cannot occur in a torch.uint8 target"):
            multi_logit_dice_ce([z], y.to(torch.uint8), ignore_index=300, **call)
        y_bad = y.clone()
        y_bad[0, 0, :2] = 4  # neither a class nor the ignore label
        y_bad[0, 1, :3] = 3
        with pytest.raises(ValueError, match=r"target holds 2 labels outside \[0, 2\] other than ignore_index=3"):
            multi_logit_dice_ce([z], y_bad, ignore_index=3, **call)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_loss_modules_take_ignore_index(backend):
    """DiceCELoss, DeepSupervisionDiceCE and LoMixLoss hand ``ignore_index`` to the kernels: without it the ignore
    label is an out-of-range label; with it DiceCELoss equals its loss on the kept part alone."""
    g = torch.Generator().manual_seed(2)
    C = 3
    maps = [torch.randn(2, C, 4 * k, 6 * k, generator=g) for k in (1, 2)]
    y = torch.randint(0, C, (2, 8, 12), generator=g)
    ign = y.clone()
    ign[..., 6:] = C
    with force_backend(backend):
        kept = DiceCELoss()(maps[1][..., :6].contiguous(), y[..., :6].contiguous())
        assert_verbose_allclose(DiceCELoss(ignore_index=C)(maps[1], ign), kept, atol=1e-6, rtol=1e-5,
                                name="DiceCELoss(ignore_index) vs the kept part")
        for with_ignore, without in ((DeepSupervisionDiceCE(2, ignore_index=C), DeepSupervisionDiceCE(2)),
                                     (LoMixLoss(2, C, 2, ignore_index=C), LoMixLoss(2, C, 2))):
            without.load_state_dict(with_ignore.state_dict())  # the same mixing parameters
            with pytest.raises(ValueError, match="labels outside"):  # its first call validates
                without(maps, ign)
            loss = with_ignore(maps, ign)
            assert torch.isfinite(loss) and not torch.allclose(loss, without(maps, y)), type(without).__name__
