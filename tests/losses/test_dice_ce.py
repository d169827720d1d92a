"""Single-map Dice + CE against MONAI's DiceCELoss (loss and gradient) and the LGMSNet BCE + Dice (MONAI's own test
cases: test_monai_cases.py)."""
import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.losses import BCEDiceLoss, DeepSupervisionDiceCE, DiceCELoss
from segfuse.testing import assert_verbose_allclose

monai_losses = pytest.importorskip("monai.losses", reason="MONAI parity tests need `pip install monai`")

CONFIGS = [
    dict(),
    dict(include_background=False, squared_pred=True, batch=True),
    dict(smooth_nr=0.0, smooth_dr=1e-6, lambda_dice=0.7, lambda_ce=0.3),
    dict(include_background=False, batch=False, squared_pred=False, smooth_nr=1.0, smooth_dr=1.0),
]


def _grad_pair(ours, theirs, x, y_ours, y_theirs):
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    la = ours(xa, y_ours)
    la.backward()
    lb = theirs(xb, y_theirs)
    lb.backward()
    return la, lb, xa.grad, xb.grad


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("shape", [(2, 4, 9, 11), (2, 3, 4, 5, 6)], ids=["2d", "3d"])
def test_matches_monai_softmax(cfg, shape, backend):
    x = torch.randn(*shape) * 2
    y = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]))
    ours = DiceCELoss(to_onehot_y=True, softmax=True, **cfg)
    theirs = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, **cfg)
    with force_backend(backend):
        la, lb, ga, gb = _grad_pair(ours, theirs, x, y, y)
    assert_verbose_allclose(la, lb, atol=1e-6, rtol=1e-5, name="loss")
    assert_verbose_allclose(ga, gb, atol=1e-6 * gb.abs().max().item(), rtol=1e-4, name="grad")


@pytest.mark.parametrize("cfg", [dict(), dict(batch=True, squared_pred=True)], ids=["default", "batch-squared"])
def test_matches_monai_sigmoid_single_channel(cfg):
    x = torch.randn(2, 1, 9, 11) * 2
    y = torch.randint(0, 2, (2, 1, 9, 11))
    ours = DiceCELoss(sigmoid=True, softmax=False, **cfg)
    theirs = monai_losses.DiceCELoss(sigmoid=True, **cfg)
    with force_backend("triton"):
        la, lb, ga, gb = _grad_pair(ours, theirs, x, y, y.float())
    assert_verbose_allclose(la, lb, atol=1e-6, rtol=1e-5, name="loss")
    assert_verbose_allclose(ga, gb, atol=1e-6 * gb.abs().max().item(), rtol=1e-4, name="grad")


def test_bce_dice_lgmsnet():
    x = torch.randn(3, 1, 9, 11)
    y = torch.randint(0, 2, (3, 1, 9, 11))

    def lgmsnet(inp, tgt):  # the released BCEDiceLoss, written out
        bce = F.binary_cross_entropy_with_logits(inp, tgt.float())
        p = torch.sigmoid(inp).view(inp.shape[0], -1)
        t = tgt.float().view(inp.shape[0], -1)
        dice = (2.0 * (p * t).sum(1) + 1e-5) / (p.sum(1) + t.sum(1) + 1e-5)
        return 0.5 * bce + (1 - dice.mean())

    with force_backend("triton"):
        la, lb, ga, gb = _grad_pair(BCEDiceLoss(), lgmsnet, x, y, y)
    assert_verbose_allclose(la, lb, atol=1e-6, rtol=1e-5, name="loss")
    assert_verbose_allclose(ga, gb, atol=1e-6 * gb.abs().max().item(), rtol=1e-4, name="grad")


def test_deep_supervision_fixed_weights():
    """Maps coarse -> fine (as the models return them): the finest map gets nnU-Net's largest weight."""
    maps = [torch.randn(2, 3, 2, 3), torch.randn(2, 3, 4, 6), torch.randn(2, 3, 8, 12)]
    y = torch.randint(0, 3, (2, 8, 12))
    ds = DeepSupervisionDiceCE(3, include_background=False)
    with force_backend("triton"):
        got = ds(maps, y)
    single = DiceCELoss(include_background=False)
    up = [F.interpolate(m, size=(8, 12), mode="bilinear", align_corners=False) for m in maps]
    w = torch.tensor([1.0, 2.0, 4.0]) / 7.0
    with force_backend("reference"):
        want = sum(wi * single(m, y) for wi, m in zip(w, up))
    assert_verbose_allclose(got, want, atol=1e-6, rtol=1e-5, name="loss")


def test_deep_supervision_order_end_to_end():
    """``DeepSupervisionDiceCE(M)(model(x), y)`` on a registered model in training mode: the gradient the
    finest map receives is the largest share (weight 8/15 of 4 maps), the coarsest the smallest."""
    from segfuse.models import create_model

    torch.manual_seed(0)
    net = create_model("lgmsnet", spatial_dims=2, in_channels=1, num_classes=3, deep_supervision=True).train()
    x, y = torch.randn(1, 1, 32, 32), torch.randint(0, 3, (1, 32, 32))
    with force_backend("reference"):
        maps = net(x)
        assert [m.shape[-1] for m in maps] == sorted(m.shape[-1] for m in maps), "models return coarse -> fine"
        ds = DeepSupervisionDiceCE(len(maps))
        assert torch.allclose(ds.weights, torch.tensor([1.0, 2.0, 4.0, 8.0]) / 15.0)
        parts = [DiceCELoss()(F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False), y)
                 for m in maps]
        want = sum(w * p for w, p in zip(ds.weights, parts))
        assert_verbose_allclose(ds(maps, y), want, atol=1e-6, rtol=1e-5, name="loss")


def test_constructor_errors():
    with pytest.raises(ValueError, match="at most one of sigmoid=True, softmax=True, other_act"):
        DiceCELoss(sigmoid=True, softmax=True)
    # softmax by default unless sigmoid / other_act is asked for (MONAI users write DiceCELoss(sigmoid=True))
    assert DiceCELoss().softmax and not DiceCELoss(sigmoid=True).softmax and not DiceCELoss(other_act=torch.tanh).softmax
    with pytest.raises(ValueError, match=r"without one-hot encoding \(to_onehot_y=False\) the target holds one "
                                         r"channel per class, \(B, 2, \*spatial\)"):
        DiceCELoss(to_onehot_y=False, sigmoid=True, softmax=False)(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="4 values that are not integer labels"):
        DiceCELoss()(torch.randn(1, 2, 4, 4), torch.tensor([0.0, 1.0, 0.5, 1.0]).repeat(1, 1, 4, 1))


# MONAI's options that run in the fused kernels (class weights, label smoothing, one-hot / soft targets, no
# activation, other_act, the MONAI CE convention for sigmoid with C > 1, Jaccard, "sum"): loss and input gradient
# against MONAI's DiceCELoss itself. (target kind: "labels" (B, 1, ...) with to_onehot_y, "onehot", "soft")
W4 = [0.3, 1.0, 2.0, 0.6]
MONAI_OPTION_CONFIGS = {
    "weights-softmax": (dict(softmax=True, weight=W4), "labels"),
    "weights-no-bg-batch": (dict(softmax=True, weight=W4, include_background=False, batch=True), "labels"),
    "label-smoothing-weights": (dict(softmax=True, weight=W4, label_smoothing=0.15), "labels"),
    "onehot-targets-no-activation": (dict(), "onehot"),
    "soft-targets-softmax-smoothing": (dict(softmax=True, label_smoothing=0.1), "soft"),
    "other-act-tanh": (dict(other_act=torch.tanh, weight=W4), "labels"),
    "sigmoid-monai-softmax-ce": (dict(sigmoid=True, weight=W4, multilabel_ce="softmax"), "labels"),
    "jaccard-squared": (dict(softmax=True, jaccard=True, squared_pred=True), "labels"),
    "reduction-sum-weights": (dict(softmax=True, reduction="sum", weight=W4, lambda_ce=0.4), "labels"),
}


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name", list(MONAI_OPTION_CONFIGS))
def test_matches_monai_options(name, backend):
    opts, kind = MONAI_OPTION_CONFIGS[name]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 7, 9, generator=g) * 2
    labels = torch.randint(0, 4, (2, 1, 7, 9), generator=g)
    if kind == "labels":
        y, onehot = labels, dict(to_onehot_y=True)
    else:
        y = F.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
        if kind == "soft":
            y = 0.8 * y + 0.2 * torch.rand(y.shape, generator=g)
        onehot = dict(to_onehot_y=False)
    mine = {**dict(sigmoid=False, softmax=False), **onehot, **opts}
    theirs = {k: (torch.tensor(v) if k == "weight" else v) for k, v in {**onehot, **opts}.items()
              if k != "multilabel_ce"}
    with force_backend(backend):
        la, lb, ga, gb = _grad_pair(DiceCELoss(**mine), monai_losses.DiceCELoss(**theirs), x, y, y)
    assert_verbose_allclose(la, lb, atol=1e-5, rtol=1e-5, name="loss")
    assert_verbose_allclose(ga, gb, atol=1e-6 * gb.abs().max().item(), rtol=1e-4, name="grad")
