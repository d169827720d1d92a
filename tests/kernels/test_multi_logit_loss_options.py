"""MONAI's / torch's per-voxel loss options in the fused kernels, against the eager reference (which uses torch's own
``cross_entropy`` / ``binary_cross_entropy_with_logits``): class weights (CE weights, BCE pos_weight, Dice class
weights), label smoothing, one-hot and soft float targets, no activation, a sigmoid Dice beside a softmax CE
(MONAI's DiceCELoss convention), MONAI's soft-label Dice, Jaccard, and the "sum" / "none" reductions. Forward
(loss and per-map losses) and every gradient, odd shapes, coarse maps at their own resolution, 2D and 3D, fp32 and
fp16 in the interpreter; then the errors a wrong option gets."""
import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.kernels.multi_logit_loss.specs import make_problem
from segfuse.testing import assert_verbose_allclose

MONAI = dict(weight_mode="fixed", ce_weight=1.0, dice_weight=1.0, squared=False, batch=False)
CW3 = [0.2, 1.5, 0.7]
DW3 = [0.5, 2.0, 1.0]


def _soft(y, C, seed=0):
    """Soft targets ``(B, C, *S)`` near the one-hot of ``y`` (each voxel sums to 1)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((y.shape[0], C, *y.shape[1:]), generator=g)
    return (0.7 * F.one_hot(y.long(), C).movedim(-1, 1).float() + 0.3 * noise / noise.sum(1, keepdim=True))


# label: (map sizes, target size, C, ops, target kind, options). target kind: "labels", "onehot", "soft", "binary"
CASES = {
    "ce-weights-dice-weights-no-bg": ([(7, 11)], (7, 11), 3, (), "labels",
                                      dict(MONAI, class_weight=CW3, dice_class_weight=DW3, include_background=False)),
    "ce-weights-with-ignore": ([(7, 11)], (7, 11), 3, (), "ignore", dict(MONAI, class_weight=CW3, ignore_index=3)),
    "label-smoothing": ([(7, 11)], (7, 11), 3, (), "labels", dict(MONAI, label_smoothing=0.1)),
    "label-smoothing-weights-ignore": ([(5, 9)], (5, 9), 3, (), "ignore",
                                       dict(MONAI, label_smoothing=0.2, class_weight=CW3, ignore_index=3)),
    "onehot-float-targets": ([(7, 11)], (7, 11), 3, (), "onehot", dict(MONAI)),
    "soft-targets-smoothing-weights": ([(7, 11)], (7, 11), 3, (), "soft",
                                       dict(MONAI, label_smoothing=0.1, class_weight=CW3, dice_class_weight=DW3)),
    "no-activation-soft-label": ([(7, 11)], (7, 11), 3, (), "soft",
                                 dict(MONAI, activation="none", soft_label=True)),
    "no-activation-squared": ([(7, 11)], (7, 11), 3, (), "soft", dict(MONAI, activation="none", squared=True)),
    "no-activation-1ch-bce": ([(7, 11)], (7, 11), 1, (), "binary", dict(MONAI, activation="none", ce_bce=True)),
    "sigmoid-dice-softmax-ce": ([(7, 11)], (7, 11), 3, (), "labels", dict(MONAI, sigmoid=True, ce_bce=False,
                                                                          class_weight=CW3)),
    "sigmoid-1ch-pos-weight": ([(7, 11)], (7, 11), 1, (), "binary", dict(MONAI, sigmoid=True, class_weight=[2.5])),
    "sigmoid-multilabel-pos-weight-soft": ([(7, 11)], (7, 11), 3, (), "soft",
                                           dict(MONAI, sigmoid=True, class_weight=CW3, soft_label=True)),
    "jaccard-batch": ([(7, 11)], (7, 11), 3, (), "labels", dict(MONAI, jaccard=True, batch=True)),
    "jaccard-squared-dice-weights": ([(7, 11)], (7, 11), 3, (), "labels",
                                     dict(MONAI, jaccard=True, squared=True, dice_class_weight=DW3)),
    "reduction-sum": ([(7, 11)], (7, 11), 3, (), "labels", dict(MONAI, reduction="sum", class_weight=CW3)),
    "reduction-sum-bce-batch": ([(7, 11)], (7, 11), 1, (), "binary", dict(MONAI, sigmoid=True, batch=True,
                                                                           reduction="sum")),
    # several maps at their own resolutions, LoMix mixing in the kernel, with the new options
    "native-lomix-weights-smoothing": ([(2, 3), (4, 6), (8, 12)], (8, 12), 3, ("add", "mul", "attention"), "labels",
                                       dict(weight_mode="softplus", ce_weight=0.3, dice_weight=0.7, squared=True,
                                            class_weight=CW3, dice_class_weight=DW3, label_smoothing=0.1)),
    "native-soft-targets-jaccard": ([(3, 5), (6, 10)], (6, 10), 3, ("add",), "soft",
                                    dict(weight_mode="fixed", jaccard=True, squared=False, batch=False)),
    "3d-weights-ignore-jaccard": ([(2, 3, 5), (3, 5, 7)][1:], (3, 5, 7), 3, (), "ignore",
                                  dict(MONAI, class_weight=CW3, dice_class_weight=DW3, jaccard=True, ignore_index=3)),
    "3d-native-none-activation": ([(1, 2, 3), (3, 4, 6)], (3, 4, 6), 3, (), "soft",
                                  dict(weight_mode="fixed", activation="none", soft_label=True, squared=False)),
}


def _problem(label, dtype=torch.float32):
    sizes, target_size, C, ops, kind, kw = CASES[label]
    maps, y, params = make_problem(len(sizes), 2, C, sizes, target_size, ops, dtype=dtype, seed=3)
    kw = dict(kw)
    if kw.get("activation") == "none":  # inputs of the size of probabilities: the Dice of raw inputs
        maps = [(torch.rand_like(x.float()) * 1.2 - 0.1).to(dtype).requires_grad_() for x in maps]
    if kind == "ignore":
        g = torch.Generator().manual_seed(5)
        y = torch.where(torch.rand(y.shape, generator=g) < 0.3, torch.full_like(y, kw["ignore_index"]), y)
    elif kind == "onehot":
        y = F.one_hot(y, C).movedim(-1, 1).float()
    elif kind == "soft":
        y = _soft(y, C)
    elif kind == "binary":
        y = y.clamp(max=1)
    for k in ("class_weight", "dice_class_weight"):
        if k in kw:
            kw[k] = torch.tensor(kw[k])
    return maps, y, params, ops, kw


def _run(backend, maps, y, params, ops, **kw):
    with force_backend(backend):
        loss, per_map = multi_logit_dice_ce(maps, y, params["raw_weights"], ops=ops, return_per_map=True,
                                            **{k: v for k, v in params.items() if k != "raw_weights"}, **kw)
        grads = torch.autograd.grad(loss, list(maps) + list(params.values()))
    return loss, per_map, grads


def _compare(tri, ref, tol=1e-5):
    assert torch.isfinite(tri[0]).all(), "non-finite loss"
    assert_verbose_allclose(tri[0], ref[0], atol=tol, rtol=tol, name="loss")
    assert_verbose_allclose(tri[1], ref[1], atol=tol, rtol=tol, name="per-map losses")
    for i, (g_t, g_r) in enumerate(zip(tri[2], ref[2])):
        scale = max(g_r.abs().max().item(), 1e-6)
        assert_verbose_allclose(g_t.float(), g_r.float(), atol=tol * scale, rtol=10 * tol, name=f"grad {i}")


@pytest.mark.parametrize("label", list(CASES))
def test_option_parity_with_the_reference(label):
    maps, y, params, ops, kw = _problem(label)
    _compare(_run("triton", maps, y, params, ops, **kw), _run("reference", maps, y, params, ops, **kw))


@pytest.mark.parametrize("label", ["ce-weights-with-ignore", "soft-targets-smoothing-weights", "jaccard-batch",
                                   "native-soft-targets-jaccard"])
def test_option_parity_fp16(label):
    maps, y, params, ops, kw = _problem(label, dtype=torch.float16)
    _compare(_run("triton", maps, y, params, ops, **kw), _run("reference", maps, y, params, ops, **kw), tol=2e-3)


def test_the_reference_is_torch_weighted_smoothed_cross_entropy():
    """The oracle itself: CE with class weights, smoothing and ignored voxels is torch's CrossEntropyLoss."""
    maps, y, params, ops, kw = _problem("label-smoothing-weights-ignore")
    with force_backend("reference"):
        got = multi_logit_dice_ce(maps, y, torch.ones(1), weight_mode="fixed", ce_weight=1.0, dice_weight=0.0,
                                  class_weight=kw["class_weight"], label_smoothing=0.2, ignore_index=3)
    want = F.cross_entropy(maps[0].float(), y, weight=kw["class_weight"], label_smoothing=0.2, ignore_index=3)
    assert_verbose_allclose(got, want, atol=1e-6, rtol=1e-6, name="CE vs torch")
    with force_backend("triton"):
        tri = multi_logit_dice_ce(maps, y, torch.ones(1), weight_mode="fixed", ce_weight=1.0, dice_weight=0.0,
                                  class_weight=kw["class_weight"], label_smoothing=0.2, ignore_index=3)
    assert_verbose_allclose(tri, want, atol=1e-5, rtol=1e-5, name="fused CE vs torch")


@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
def test_reduction_none_gives_per_class_dice_and_its_gradient(batch):
    """reduction="none": the (B or 1, T, C) weighted Dice terms, equal on both backends, with the gradient of any
    upstream gradient of them; their mean is the "mean" reduction's loss."""
    maps, y, params, _ops, _kw = _problem("jaccard-batch")
    kw = dict(weight_mode="fixed", ce_weight=0.0, dice_weight=1.0, squared=False, batch=batch, sigmoid=True,
              dice_class_weight=torch.tensor(DW3), include_background=False)
    up = torch.randn(1 if batch else 2, 1, 3, generator=torch.Generator().manual_seed(2))
    out = {}
    for backend in ("triton", "reference"):
        with force_backend(backend):
            terms = multi_logit_dice_ce(maps, y, torch.ones(1), reduction="none", **kw)
            (g,) = torch.autograd.grad((terms * up).sum(), maps)
            mean = multi_logit_dice_ce(maps, y, torch.ones(1), **kw)
        assert terms.shape == (1 if batch else 2, 1, 3)
        assert torch.equal(terms[:, :, 0], torch.zeros_like(terms[:, :, 0])), "excluded background is not 0"
        assert_verbose_allclose(terms[:, :, 1:].mean(), mean, atol=1e-6, rtol=1e-6, name="mean of the terms")
        out[backend] = (terms, g)
    assert_verbose_allclose(out["triton"][0], out["reference"][0], atol=1e-6, rtol=1e-5, name="terms")
    assert_verbose_allclose(out["triton"][1], out["reference"][1], atol=1e-6, rtol=1e-4, name="grad")


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_onehot_float_targets_equal_integer_labels(backend):
    """One-hot float targets give the loss and gradients of the integer labels they encode (incl. weights and
    smoothing, whose CE denominators agree for one-hot targets only without class weights)."""
    maps, y, params, ops, kw = _problem("label-smoothing")
    onehot = F.one_hot(y, 3).movedim(-1, 1).float()
    a = _run(backend, maps, y, params, ops, **kw)
    b = _run(backend, maps, onehot, params, ops, **kw)
    _compare(b, a, tol=1e-6)


@pytest.mark.parametrize("bad, match, error", [
    (dict(sigmoid=True, label_smoothing=0.1), "label_smoothing=0.1 applies to the softmax cross-entropy", ValueError),
    (dict(activation="softmax", ce_bce=True), "ce_bce=True .* not softmax", ValueError),
    (dict(label_smoothing=1.5), r"label_smoothing must be in \[0, 1\]", ValueError),
    (dict(class_weight=torch.ones(4)), r"class_weight must hold one weight per class, shape \(3,\)", ValueError),
    (dict(dice_class_weight=torch.tensor([1.0, -1.0, 1.0])), "dice_class_weight must be >= 0", ValueError),
    (dict(class_weight=torch.ones(3, dtype=torch.bool)), "class_weight must have dtype", TypeError),
    (dict(reduction="none", ce_weight=1.0), "reduction='none' .* needs ce_weight=0", ValueError),
    (dict(reduction="max"), "reduction", ValueError),
    (dict(activation="tanh"), "activation", ValueError),
])
def test_bad_options_raise(bad, match, error):
    z = torch.randn(2, 3, 5, 6)
    y = torch.randint(0, 3, (2, 5, 6))
    with pytest.raises(error, match=match):
        multi_logit_dice_ce([z], y, torch.ones(1), weight_mode="fixed", **bad)


def test_dense_target_errors():
    z = torch.randn(2, 3, 5, 6)
    with pytest.raises(ValueError, match=r"must be \(B, C, \*spatial\) = \(2, 3, \.\.\.\)"):
        multi_logit_dice_ce([z], torch.rand(2, 2, 5, 6), torch.ones(1), weight_mode="fixed")
    with pytest.raises(ValueError, match="ignore_index=3 needs integer labels"):
        multi_logit_dice_ce([z], torch.rand(2, 3, 5, 6), torch.ones(1), weight_mode="fixed", ignore_index=3)
