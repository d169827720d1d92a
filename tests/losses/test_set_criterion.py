"""MaskMed set criterion: Hungarian matcher against brute force, the loss against a plain loop re-computation
(dense, 2D / 3D, several stages), the final-stage assignment reused for earlier stages, point sampling,
gradients, autocast and input errors."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels.utils import InputShapeError, InputTypeError, InputValueError
from segfuse.losses import HungarianMatcher, MaskMedCriterion, semantic_targets
from segfuse.losses.set_criterion import point_sample, solve_assignment


# ----------------------------------------------------------------------------- plain references
def brute_force(cost):
    """Minimum total cost over all injective maps (smaller side into larger side) and its pairs."""
    q, g = cost.shape
    best, best_pairs = math.inf, None
    if q >= g:
        for perm in itertools.permutations(range(q), g):
            pairs = [(perm[j], j) for j in range(g)]
            c = sum(cost[i, j].item() for i, j in pairs)
            if c < best:
                best, best_pairs = c, pairs
    else:
        for perm in itertools.permutations(range(g), q):
            pairs = [(i, perm[i]) for i in range(q)]
            c = sum(cost[i, j].item() for i, j in pairs)
            if c < best:
                best, best_pairs = c, pairs
    return best, sorted(best_pairs)


def block_mean(mask, size):
    """Average a [*S] mask over blocks down to ``size`` (reshape-based, independent of avg_pool)."""
    f = [s // d for s, d in zip(mask.shape, size)]
    shape = [v for d, k in zip(size, f) for v in (d, k)]
    return mask.reshape(shape).mean(dim=tuple(range(1, 2 * len(size), 2)))


def ref_targets(t):
    """Per sample: sorted present classes and their binary masks (t: [N, *S])."""
    out = []
    for b in range(t.shape[0]):
        labels = sorted(set(t[b].flatten().tolist()))
        out.append((labels, [(t[b] == c).double() for c in labels]))
    return out


def bce_mean(x, t):
    return (-(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))).mean()


def dice(x, t):
    s = torch.sigmoid(x)
    return 1 - (2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1)


def ref_cost(cls_b, msk_b, labels, masks, cw=2.0, mw=5.0, dw=5.0):
    q = cls_b.shape[0]
    cost = torch.zeros(q, len(labels), dtype=torch.float64)
    for i in range(q):
        p = torch.softmax(cls_b[i].double(), 0)
        x = msk_b[i].double()
        for j, (c, m) in enumerate(zip(labels, masks)):
            t = block_mean(m, x.shape)
            cost[i, j] = cw * -p[c] + mw * bce_mean(x, t) + dw * dice(x, t)
    return cost


def ref_loss(cls, msk, target, k, eow=0.1, cw=2.0, mw=5.0, dw=5.0, stage_weights=None, assignment=None):
    """The criterion written out: brute-force matching at the final stage, loops for CE / BCE / Dice."""
    tg = ref_targets(target)
    n, q = cls[-1].shape[:2]
    if assignment is None:
        assignment = [brute_force(ref_cost(cls[-1][b], msk[-1][b], *tg[b], cw, mw, dw))[1] for b in range(n)]
    num_masks = sum(len(lab) for lab, _ in tg)
    total = torch.zeros((), dtype=torch.float64)
    for s in range(len(cls)):
        num = den = 0.0
        for b in range(n):
            matched = dict(assignment[b])
            for i in range(q):
                c = tg[b][0][matched[i]] if i in matched else k
                w = 1.0 if c < k else eow
                num = num + w * -torch.log_softmax(cls[s][b, i].double(), 0)[c]
                den += w
        ce = num / den
        bce = dsc = 0.0
        for b in range(n):
            for i, j in assignment[b]:
                x = msk[s][b, i].double()
                t = block_mean(tg[b][1][j], x.shape)
                bce = bce + bce_mean(x, t)
                dsc = dsc + dice(x, t)
        w = 1.0 if stage_weights is None else stage_weights[s]
        total = total + w * (cw * ce + mw * bce / num_masks + dw * dsc / num_masks)
    return total


def make_outputs(n, q, k, sizes, requires_grad=False, scale=2.0):
    cls = [torch.randn(n, q, k + 1) * scale for _ in sizes]
    msk = [torch.randn(n, q, *s) * scale for s in sizes]
    if requires_grad:
        for t in cls + msk:
            t.requires_grad_()
    return cls, msk


def make_target(n, k, size, absent=True):
    t = torch.randint(0, k, (n, *size))
    if absent and n > 1:
        t[0] = torch.randint(0, k - 1, tuple(size))  # class k-1 absent from sample 0
        t[-1] = 1  # a sample holding a single class
    return t


# ----------------------------------------------------------------------------- semantic targets
def test_semantic_targets():
    t = torch.tensor([[[0, 2], [2, 2]], [[1, 1], [1, 1]]])  # (N=2, H=2, W=2)
    out = semantic_targets(t, 3)
    assert out[0][0].tolist() == [0, 2] and out[1][0].tolist() == [1]
    assert out[0][0].dtype == torch.int64 and out[0][1].dtype == torch.float32
    assert torch.equal(out[0][1], torch.tensor([[[1., 0.], [0., 0.]], [[0., 1.], [1., 1.]]]))
    assert torch.equal(out[1][1], torch.ones(1, 2, 2))
    # (N, 1, *S), uint8, explicit 3D with D == 1
    out_c = semantic_targets(t.unsqueeze(1).to(torch.uint8), 3)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(out, out_c))
    out_3d = semantic_targets(t.unsqueeze(1), 3, spatial_dims=3)
    assert out_3d[0][1].shape == (2, 1, 2, 2)
    with pytest.raises(InputValueError, match=r"outside \[0, num_classes-1\]"):
        semantic_targets(t, 2)


# ----------------------------------------------------------------------------- matcher
@pytest.mark.parametrize("q,g", [(4, 2), (3, 3), (5, 3), (2, 4), (3, 5), (1, 3), (3, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solve_assignment_brute_force(q, g, seed):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(q, g, generator=gen) * 10 - 3
    rows, cols = solve_assignment(cost)
    assert rows.dtype == cols.dtype == torch.int64 and rows.numel() == min(q, g)
    assert len(set(rows.tolist())) == len(set(cols.tolist())) == min(q, g)
    best, _ = brute_force(cost)
    assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("q", [2, 4, 6])
@pytest.mark.parametrize("pred_size,tgt_size", [((3, 4, 2), (6, 8, 4)), ((5, 4), (5, 4))], ids=["3d", "2d"])
def test_matcher_cost_and_assignment(q, pred_size, tgt_size):
    k = 4
    cls, msk = make_outputs(2, q, k, [pred_size])
    target = make_target(2, k, tgt_size)
    targets = semantic_targets(target, k)
    matcher = HungarianMatcher()
    costs = matcher.cost_matrices(cls[0], msk[0], targets)
    indices = matcher(cls[0], msk[0], targets)
    for b, (labels, masks) in enumerate(ref_targets(target)):
        ref = ref_cost(cls[0][b], msk[0][b], labels, masks)
        torch.testing.assert_close(costs[b].double(), ref, atol=1e-5, rtol=1e-5)
        rows, cols = indices[b]
        best, _ = brute_force(ref)
        assert ref[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("num_points", [None, 200])
def test_matcher_obvious_answer(num_points):
    k, q = 4, 4
    target = torch.zeros(2, 8, 8, 8, dtype=torch.int64)
    target[:, :4, :4] = 1
    target[:, 4:, :, 4:] = 2
    target[0, :2, 4:, :] = 3  # sample 1 has no class 3
    perm = [[2, 0, 3, 1], [1, 3, 0, 2]]  # query i predicts class perm[b][i]
    cls = torch.full((2, q, k + 1), -5.0)
    msk = torch.empty(2, q, 8, 8, 8)
    for b in range(2):
        for i, c in enumerate(perm[b]):
            cls[b, i, c] = 5.0
            msk[b, i] = torch.where(target[b] == c, 8.0, -8.0)
    targets = semantic_targets(target, k)
    for b, (rows, cols) in enumerate(HungarianMatcher(num_points=num_points)(cls, msk, targets)):
        labels = targets[b][0]
        got = {int(r): int(labels[c]) for r, c in zip(rows, cols)}
        want = {i: c for i, c in enumerate(perm[b]) if c in labels.tolist()}
        assert got == want


def test_matcher_points_seeded():
    cls, msk = make_outputs(2, 4, 4, [(4, 6, 5)])
    targets = semantic_targets(make_target(2, 4, (4, 6, 5)), 4)
    matcher = HungarianMatcher(num_points=64)
    torch.manual_seed(3)
    a = matcher.cost_matrices(cls[0], msk[0], targets)
    torch.manual_seed(3)
    b = matcher.cost_matrices(cls[0], msk[0], targets)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.isfinite(x).all() for x in a)


def test_matcher_nan_cost():
    cls, msk = make_outputs(1, 3, 3, [(4, 4)])
    cls[0][0, 1, 0] = float("nan")
    with pytest.raises(InputValueError, match="non-finite"):
        HungarianMatcher()(cls[0], msk[0], semantic_targets(torch.randint(0, 3, (1, 4, 4)), 3))


# ----------------------------------------------------------------------------- criterion, dense
CASES = [
    pytest.param(3, 4, [(2, 2, 4), (4, 4, 4), (8, 8, 8)], (8, 8, 8), id="3d-3stages"),
    pytest.param(2, 4, [(3, 2), (6, 4), (12, 8)], (12, 8), id="2d-3stages"),
    pytest.param(3, 3, [(2, 4, 2), (4, 8, 4)], (4, 8, 4), id="3d-q<k"),
    pytest.param(2, 6, [(3, 2), (12, 8)], (12, 8), id="2d-q>k"),
]


@pytest.mark.parametrize("n,q,sizes,tsize", CASES)
def test_criterion_matches_reference(n, q, sizes, tsize):
    k = 4
    cls, msk = make_outputs(n, q, k, sizes)
    target = make_target(n, k, tsize)
    crit = MaskMedCriterion(k)
    torch.testing.assert_close(crit({"class_logits": cls, "mask_logits": msk}, target).double(),
                               ref_loss(cls, msk, target, k), atol=1e-5, rtol=1e-5)


def test_criterion_options_and_channel_target():
    k, sizes = 3, [(2, 3, 2), (4, 6, 4)]
    cls, msk = make_outputs(2, 3, k, sizes)
    target = make_target(2, k, (4, 6, 4))
    cfg = dict(eow=0.3, cw=1.0, mw=2.0, dw=0.5, stage_weights=[0.25, 1.5])
    crit = MaskMedCriterion(k, no_object_weight=0.3, class_weight=1.0, mask_weight=2.0, dice_weight=0.5,
                            stage_weights=[0.25, 1.5])
    out = crit({"class_logits": cls, "mask_logits": msk}, target.unsqueeze(1).int())
    torch.testing.assert_close(out.double(), ref_loss(cls, msk, target, k, **cfg), atol=1e-5, rtol=1e-5)
    assert torch.equal(crit.empty_weight, torch.tensor([1.0, 1.0, 1.0, 0.3]))


def test_final_assignment_reused_for_earlier_stages():
    """Stage 0 alone would match query i to class (i+1) % K; the final stage matches query i to class i."""
    k = q = 3
    target = torch.zeros(2, 4, 4, 4, dtype=torch.int64)
    target[:, 2:] = 1
    target[:, :, 2:] = 2
    cls, msk = [], []
    for shift, size in ((1, (2, 2, 2)), (0, (4, 4, 4))):
        c = torch.full((2, q, k + 1), -3.0)
        m = torch.empty(2, q, *size)
        for i in range(q):
            cls_id = (i + shift) % k
            c[:, i, cls_id] = 3.0
            m[:, i] = torch.where(block_mean((target[0] == cls_id).float(), size) > 0.5, 4.0, -4.0)
        cls.append(c)
        msk.append(m)
    crit = MaskMedCriterion(k)
    terms = crit.loss_terms({"class_logits": cls, "mask_logits": msk}, target)
    for rows, cols in terms["indices"]:
        assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 1, 2]
    # matching the coarse stage on its own gives the shifted assignment
    alone = crit.loss_terms({"class_logits": cls[:1], "mask_logits": msk[:1]}, target)["indices"]
    assert [c.tolist() for _, c in alone] == [[1, 2, 0]] * 2
    identity = [[(0, 0), (1, 1), (2, 2)]] * 2
    shifted = [[(0, 1), (1, 2), (2, 0)]] * 2
    loss = crit({"class_logits": cls, "mask_logits": msk}, target).double()
    torch.testing.assert_close(loss, ref_loss(cls, msk, target, k, assignment=identity), atol=1e-5, rtol=1e-5)
    assert not torch.isclose(loss, ref_loss(cls, msk, target, k, assignment=shifted))


def test_gradients_flow_every_stage():
    k = 4
    cls, msk = make_outputs(2, 4, k, [(2, 2, 2), (4, 4, 2), (8, 8, 4)], requires_grad=True)
    MaskMedCriterion(k)({"class_logits": cls, "mask_logits": msk}, make_target(2, k, (8, 8, 4))).backward()
    for t in cls + msk:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_autocast_computes_in_fp32():
    k, sizes = 4, [(2, 2, 2), (4, 4, 4)]
    cls, msk = make_outputs(2, 4, k, sizes)
    target = make_target(2, k, (4, 4, 4))
    crit = MaskMedCriterion(k)
    ref = crit({"class_logits": cls, "mask_logits": msk}, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit({"class_logits": cls, "mask_logits": msk}, target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    half = [t.bfloat16().requires_grad_() for t in cls + msk]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit({"class_logits": half[:2], "mask_logits": half[2:]}, target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in half)


# ----------------------------------------------------------------------------- criterion, points
@pytest.mark.parametrize("sizes,tsize", [([(2, 4, 2), (4, 8, 4)], (8, 8, 8)), ([(3, 2), (12, 8)], (12, 8))],
                         ids=["3d", "2d"])
def test_points_mode_seeded_finite_grads(sizes, tsize):
    k = 4
    cls, msk = make_outputs(2, 4, k, sizes, requires_grad=True)
    target = make_target(2, k, tsize)
    crit = MaskMedCriterion(k, num_points=50)
    outputs = {"class_logits": cls, "mask_logits": msk}
    torch.manual_seed(7)
    a = crit(outputs, target)
    torch.manual_seed(7)
    b = crit(outputs, target)
    c = crit(outputs, target)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a)
    a.backward()
    for t in cls + msk:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_points_mode_close_to_dense_for_smooth_masks():
    """Constant-per-block logits / targets: many points give the dense value up to sampling noise."""
    k = 2
    target = torch.zeros(1, 32, 32, dtype=torch.int64)
    target[:, :, 16:] = 1
    cls = [torch.randn(1, 2, k + 1)]
    msk = [torch.stack([torch.where(target[0] == c, 2.0, -1.0) for c in range(2)])[None]]
    outputs = {"class_logits": cls, "mask_logits": msk}
    dense = MaskMedCriterion(k)(outputs, target)
    pts = MaskMedCriterion(k, num_points=20000, importance_sample_ratio=0.0)(outputs, target)
    assert abs(pts.item() - dense.item()) < 0.05 * dense.item()


def test_importance_points_prefer_uncertain_region():
    crit = MaskMedCriterion(2, num_points=100, oversample_ratio=3.0, importance_sample_ratio=1.0)
    x = torch.linspace(-1, 1, 32)
    logits = (20 * x).expand(32, 32).reshape(1, 1, 32, 32)  # |logit| smallest near x = 0.5 (normalised)
    coords = crit._importance_points(logits, 2)
    assert coords.shape == (1, 100, 2)
    # the 100 most uncertain of 300 uniform candidates: the third closest to x = 0.5 (|x - 0.5| <~ 1/6); the
    # first coordinate is x = W (last axis), as grid_sample reads it
    assert (coords[0, :, 0] - 0.5).abs().max() < 0.25
    assert (coords[0, :, 1] - 0.5).abs().max() > 0.4  # y unconstrained
    vals = point_sample(logits, coords)[0, 0]
    assert vals.abs().max() < 0.5 * logits.abs().max()


# ----------------------------------------------------------------------------- errors
def _good(n=2, k=3, sizes=((2, 2, 2), (4, 4, 4))):
    cls, msk = make_outputs(n, k, k, list(sizes))
    return {"class_logits": cls, "mask_logits": msk}, torch.randint(0, k, (n, *sizes[-1]))


def _bad_cases():
    def labels_high(o, t):
        t[0, 0, 0, 0] = 3
        return o, t

    def labels_neg(o, t):
        t[1, 0, 0, 0] = -1
        return o, t

    return [
        ("labels>=K", labels_high, InputValueError, r"target holds labels outside \[0, num_classes-1\]"),
        ("labels<0", labels_neg, InputValueError, r"target holds labels outside \[0, num_classes-1\]"),
        ("target-float", lambda o, t: (o, t.float()), InputTypeError, "target must have dtype"),
        ("target-rank", lambda o, t: (o, t[:, 0, 0]), InputShapeError, r"target must be .*\(N, \*S\)"),
        ("target-channel", lambda o, t: (o, t[:, None].expand(-1, 2, -1, -1, -1)), InputShapeError,
         r"channel dim 2 != 1"),
        ("target-N", lambda o, t: (o, t[:1]), InputShapeError, r"target must have N = 2"),
        ("class-last-dim", lambda o, t: ({**o, "class_logits": [c[..., :3] for c in o["class_logits"]]}, t),
         InputShapeError, r"num_classes \+ 1"),
        ("class-rank", lambda o, t: ({**o, "class_logits": [c[0] for c in o["class_logits"]]}, t),
         InputShapeError, r"class_logits\[1\] must be 3-D"),
        ("mask-rank", lambda o, t: ({**o, "mask_logits": [o["mask_logits"][0][..., 0], o["mask_logits"][1]]}, t),
         InputShapeError, r"mask_logits\[0\] must be 5-D"),
        ("mask-N", lambda o, t: ({**o, "mask_logits": [o["mask_logits"][0][:1], o["mask_logits"][1]]}, t),
         InputShapeError, r"mask_logits\[0\] must be \(N, Q, \*S\)"),
        ("stage-lengths", lambda o, t: ({**o, "class_logits": o["class_logits"][1:]}, t), InputShapeError,
         "same number of stages"),
        ("stage-empty", lambda o, t: ({"class_logits": [], "mask_logits": []}, t), InputShapeError, "non-empty"),
        ("not-dividing", lambda o, t: ({**o, "mask_logits": [torch.randn(2, 3, 3, 2, 2), o["mask_logits"][1]]},
                                       t), InputShapeError, r"must divide the target size \(4, 4, 4\)"),
        ("missing-key", lambda o, t: ({"class_logits": o["class_logits"]}, t), InputValueError, "mask_logits"),
        ("not-dict", lambda o, t: (o["class_logits"], t), InputTypeError, "outputs must be a dict"),
    ]


@pytest.mark.parametrize("name,mutate,exc,match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs(name, mutate, exc, match):
    outputs, target = mutate(*_good())
    with pytest.raises(exc, match=match):
        MaskMedCriterion(3)(outputs, target)


def test_bad_config_and_matcher_inputs():
    with pytest.raises(InputValueError, match="num_classes"):
        MaskMedCriterion(0)
    with pytest.raises(InputValueError, match="num_points"):
        MaskMedCriterion(3, num_points=0)
    with pytest.raises(InputValueError, match="importance_sample_ratio"):
        MaskMedCriterion(3, importance_sample_ratio=1.5)
    with pytest.raises(InputValueError, match="oversample_ratio"):
        MaskMedCriterion(3, oversample_ratio=0.5)
    with pytest.raises(InputValueError, match="class_weight"):
        HungarianMatcher(class_weight=-1.0)
    outputs, target = _good()
    with pytest.raises(InputValueError, match="stage_weights holds 3 weights but outputs hold 2 stages"):
        MaskMedCriterion(3, stage_weights=[1, 1, 1])(outputs, target)
    cls, msk = outputs["class_logits"][-1], outputs["mask_logits"][-1]
    targets = semantic_targets(target, 3)
    with pytest.raises(InputTypeError, match="list of N=2"):
        HungarianMatcher()(cls, msk, targets[:1])
    with pytest.raises(InputValueError, match=r"labels must lie in \[0, 2\]"):
        HungarianMatcher()(cls, msk, [(torch.tensor([3]), targets[0][1][:1]), targets[1]])
    with pytest.raises(InputShapeError, match="must divide"):
        HungarianMatcher()(cls, msk, [(lab, m[:, :3]) for lab, m in targets])


# ----------------------------------------------------------------------------- ignore label (nnU-Net's "ignore")
IGNORE = 9


def test_semantic_targets_leave_the_ignore_label_out():
    t = torch.tensor([[[0, 2, IGNORE], [2, IGNORE, IGNORE]]])
    (labels, masks), = semantic_targets(t, 3, spatial_dims=2, ignore_index=IGNORE)
    assert labels.tolist() == [0, 2]
    assert masks.sum().item() == 3 and masks[:, t[0] == IGNORE].sum().item() == 0
    with pytest.raises(InputValueError, match="labels other than ignore_index=9 outside"):
        semantic_targets(torch.tensor([[[0, 3, IGNORE]]]), 3, spatial_dims=2, ignore_index=IGNORE)


@pytest.mark.parametrize("q", [3, 6], ids=["q<=k", "q>k"])
def test_ignored_voxels_are_as_if_cut_away(q):
    """Full resolution, dense: a target whose right part is ignored gives the loss (matching included) of the left
    part alone, and the ignored logits get no gradient whatever they hold."""
    n, k, keep_w = 2, 4, 5
    cls, msk = make_outputs(n, q, k, [(6, 9)])
    target = make_target(n, k, (6, 9))
    ignored = target.clone()
    ignored[..., keep_w:] = IGNORE
    crit = MaskMedCriterion(k, ignore_index=IGNORE)
    m = msk[0].detach().clone().requires_grad_()
    loss = crit({"class_logits": cls, "mask_logits": [m]}, ignored)
    (g,) = torch.autograd.grad(loss, [m])
    mc = msk[0].detach()[..., :keep_w].clone().requires_grad_()
    cut = MaskMedCriterion(k)({"class_logits": cls, "mask_logits": [mc]}, target[..., :keep_w].contiguous())
    (gc,) = torch.autograd.grad(cut, [mc])
    torch.testing.assert_close(loss, cut, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g[..., :keep_w], gc, atol=1e-7, rtol=1e-5)
    assert torch.equal(g[..., keep_w:], torch.zeros_like(g[..., keep_w:]))


@pytest.mark.parametrize("num_points", [None, 64], ids=["dense", "points"])
def test_logits_over_fully_ignored_cells_change_nothing(num_points):
    """Every stage (coarse ones area-average the scored map): logits over cells that are wholly ignored change
    neither the loss nor any other gradient, and get none themselves."""
    n, q, k = 2, 4, 3
    sizes, tsize = [(2, 4, 2), (4, 8, 4)], (4, 8, 4)
    cls, msk = make_outputs(n, q, k, sizes)
    target = make_target(n, k, tsize)
    target[..., 4:, :] = IGNORE  # the far half along H: whole cells of both stages

    def run(masks):
        leaves = [m.detach().clone().requires_grad_() for m in masks]
        torch.manual_seed(0)
        loss = MaskMedCriterion(k, ignore_index=IGNORE, num_points=num_points)(
            {"class_logits": cls, "mask_logits": leaves}, target)
        return loss, torch.autograd.grad(loss, leaves)

    loss, grads = run(msk)
    other = [m.detach().clone() for m in msk]
    for m in other:
        h = m.shape[-2] // 2
        m[..., h:, :] = torch.randn_like(m[..., h:, :]) * 5
    loss2, grads2 = run(other)
    assert torch.isfinite(loss)
    if num_points is None:
        torch.testing.assert_close(loss2, loss, atol=1e-6, rtol=1e-6)
        for g, g2 in zip(grads, grads2):
            h = g.shape[-2] // 2
            torch.testing.assert_close(g2, g, atol=1e-7, rtol=1e-5)
            assert torch.equal(g[..., h:, :], torch.zeros_like(g[..., h:, :]))
    else:  # points in the ignored half count nothing: their logits get no gradient
        for g in grads:
            h = g.shape[-2] // 2
            assert g[..., h + 1:, :].abs().max() == 0


def test_ignore_index_must_lie_outside_the_classes():
    with pytest.raises(InputValueError, match="ignore_index must be None or an int label value outside"):
        MaskMedCriterion(3, ignore_index=1)
