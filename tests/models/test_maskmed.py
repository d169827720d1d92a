"""MaskMed: parameter counts, per-stage output shapes, the eval output contract (log semantic scores),
parameter groups, gradients reaching every parameter, the Triton-vs-reference path through the FSAD
deformable attention (training step), the 3D position conventions, and argument / input errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import segfuse.losses
from segfuse.kernels import force_backend, use_triton
from segfuse.models import MaskMed, create_model
from segfuse.models.blocks.fsad import sine_position_embedding_3d, voxel_centres
from segfuse.models.blocks.mask_head import masked_attention_mask
from segfuse.testing import assert_verbose_allclose

# widths 8..32 on a 32^3 input: encoder stages 32^3 .. 4^3, decoder / head stages 8^3, 16^3, 32^3;
# FSAD head dim 32 / 4 = 8 (the kernel's minimum), 2 points
SMALL = dict(widths=(8, 16, 32, 32), blocks_per_stage=(1, 1, 1, 1), hidden_dim=32, fsad_heads=4, fsad_points=2,
             head_heads=4, norm_groups=8, head_ffn_dim=64, fsad_ffn_dim=64)
# the interpreter (with the memory sanitizer) runs ~4 s per FSAD layer, forward + backward: 2 query stages
# (8^3 + 4^3 tokens) sampling all 4 stages, 1 layer
KERNEL_PATH = dict(SMALL, fsad_query_stages=2, fsad_layers=1)
NUM_CLASSES = 3


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def small_model(**kw):
    torch.manual_seed(0)
    return MaskMed(3, 1, NUM_CLASSES, **{**SMALL, **kw})


def as_after_a_step(net):
    """Small random weights in the FSAD offset / attention-weight projections (Deformable-DETR inits them
    to 0). At init every sample on a query's own level lands exactly on a voxel centre, where the trilinear
    location gradient has a kink and the two paths may take different one-sided derivatives; content-
    dependent offsets move the samples to generic positions."""
    torch.manual_seed(1)
    for layer in net.fsad.layers:
        torch.nn.init.normal_(layer.attn.sampling_offsets.weight, std=1e-2)
        torch.nn.init.normal_(layer.attn.attention_weights.weight, std=1e-2)
    return net


def flat_outputs(out):
    return [t for key in ("class_logits", "mask_logits") for t in out[key]]


def test_param_count_default():
    net = create_model("maskmed", 3, 1, 14)  # e.g. BTCV: 13 organs + background
    total = n_params(net)
    groups = {k: sum(p.numel() for p in v) for k, v in net.param_groups().items()}
    print(f"MaskMed default (in 1, 14 classes): {total:,} parameters, {groups}")
    assert total == 67_466_255
    assert groups == {"cnn": 62_809_728, "transformer": 4_656_527}
    assert net.size_multiple == 16 and net.num_queries == 14 and net.output_strides == (8, 4, 2, 1)
    assert net.head.cross_attention_stages == 3 and net.fsad.num_query_stages == 3


def test_param_count_small():
    net = small_model()
    print(f"MaskMed small: {n_params(net):,} parameters")
    assert n_params(net) == 267_332


def test_training_and_eval_outputs():
    net = small_model()
    x = torch.randn(1, 1, 32, 32, 32)
    with force_backend("reference"), torch.no_grad():
        out = net.train()(x)
        assert set(out) == {"class_logits", "mask_logits"}
        assert [tuple(c.shape) for c in out["class_logits"]] == [(1, NUM_CLASSES, NUM_CLASSES + 1)] * 3
        assert [tuple(m.shape) for m in out["mask_logits"]] == [(1, NUM_CLASSES, s, s, s) for s in (8, 16, 32)]
        assert all(torch.isfinite(t).all() for t in flat_outputs(out))
        net.eval()
        y = net(x)
        scores = net.semantic_scores(net.forward_features(x))
    assert y.shape == (1, NUM_CLASSES, 32, 32, 32)
    torch.testing.assert_close(y.exp(), scores.clamp_min(1e-6), rtol=1e-5, atol=1e-7)
    assert (scores >= 0).all() and (scores <= net.num_queries).all()
    labels = y.argmax(1)
    assert labels.shape == (1, 32, 32, 32) and labels.min() >= 0 and labels.max() < NUM_CLASSES
    torch.testing.assert_close(labels, scores.argmax(1))  # softmax over channels keeps the ranking


def test_semantic_scores_formula():
    cls = torch.randn(2, 4, NUM_CLASSES + 1)
    masks = torch.randn(2, 4, 3, 5, 2)
    expect = torch.zeros(2, NUM_CLASSES, 3, 5, 2)
    for q in range(4):
        p = cls[:, q].softmax(-1)[:, :NUM_CLASSES]
        expect += p[:, :, None, None, None] * masks[:, q, None].sigmoid()
    got = MaskMed.semantic_scores({"class_logits": [cls], "mask_logits": [masks]})
    torch.testing.assert_close(got, expect)


def test_param_groups_cover_every_parameter_once():
    net = small_model()
    groups = net.param_groups()
    assert set(groups) == {"cnn", "transformer"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    fsad_head = {id(p) for m in (net.fsad, net.head) for p in m.parameters()}
    assert {id(p) for p in groups["transformer"]} == fsad_head
    assert isinstance(MaskMed.default_transformer_lr_scale, float) and 0 < MaskMed.default_transformer_lr_scale < 1


def test_every_parameter_gets_a_gradient():
    net = small_model(head_layers_per_stage=2).train()
    # Deformable-DETR's zero init of the offset / attention-weight projections makes the FSAD query position
    # (level embedding) gradient exactly 0 at step 0 (defined, not None: DDP is fine); as after one step:
    as_after_a_step(net)
    with force_backend("reference"):
        out = net(torch.randn(2, 1, 32, 32, 32))
        g = torch.Generator().manual_seed(1)
        sum((t * torch.randn(t.shape, generator=g)).sum() for t in flat_outputs(out)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing}"
    zero = [n for n, p in net.named_parameters() if p.grad.abs().max() == 0]
    assert not zero, f"all-zero gradient for {zero}"


def _fwd_bwd(net, x, backend, loss_fn):
    """Outputs and parameter grads of ``loss_fn(outputs)`` on ``backend`` (training mode, seeded dropout)."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks on both paths
    with force_backend(backend):  # backward dispatches when it runs: keep it inside the block
        out = net(x)
        loss = loss_fn(out)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    return [t.detach() for t in flat_outputs(out)] + [loss.detach()], grads


def _assert_paths_match(net, x, loss_fn, rtol=1e-4):
    if not use_triton(x.device):
        pytest.skip(f"the Triton path does not run on {x.device} here (CPU needs TRITON_INTERPRET=1)")
    out_t, g_t = _fwd_bwd(net, x, "auto", loss_fn)
    out_r, g_r = _fwd_bwd(net, x, "reference", loss_fn)
    for i, (a, e) in enumerate(zip(out_t, out_r)):  # atol scaled to each tensor's magnitude
        assert_verbose_allclose(a, e, atol=rtol * max(1.0, e.abs().max().item()), rtol=rtol, name=f"output[{i}]")
    assert g_t.keys() == g_r.keys()
    for name, e in g_r.items():
        assert_verbose_allclose(g_t[name], e, atol=rtol * max(1.0, e.abs().max().item()), rtol=rtol,
                                name=f"grad {name}")


def test_kernel_path_matches_reference_training_step():
    """One training step through the FSAD deformable attention: Triton (interpreter on CPU) vs reference."""
    net = as_after_a_step(small_model(**KERNEL_PATH)).train()
    x = torch.randn(1, 1, 32, 32, 32)

    def loss_fn(out):
        g = torch.Generator().manual_seed(1)
        return sum((t * torch.randn(t.shape, generator=g)).mean() for t in flat_outputs(out))
    _assert_paths_match(net, x, loss_fn)


def test_kernel_path_matches_reference_with_criterion():
    if not hasattr(segfuse.losses, "MaskMedCriterion"):
        pytest.skip("segfuse.losses.MaskMedCriterion is not available yet")
    net = as_after_a_step(small_model(**KERNEL_PATH)).train()
    criterion = net.criterion()
    assert isinstance(criterion, segfuse.losses.MaskMedCriterion)
    x = torch.randn(1, 1, 32, 32, 32)
    target = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    target[:, 4:20, 6:26, 2:18] = 1
    target[:, 18:30, 10:30, 16:30] = 2
    _assert_paths_match(net, x, lambda out: criterion(out, target))


def test_criterion_kwargs_are_forwarded():
    if not hasattr(segfuse.losses, "MaskMedCriterion"):
        pytest.skip("segfuse.losses.MaskMedCriterion is not available yet")
    net = small_model(criterion_kwargs={"no_object_weight": 0.2})
    assert net.criterion_kwargs == {"no_object_weight": 0.2}
    assert isinstance(net.criterion(), segfuse.losses.MaskMedCriterion)


def test_autocast_bf16_forward():
    """Under autocast the deformable attention runs in fp32 (locations); the eval scores come out fp32."""
    net = small_model(fsad_layers=1)
    x = torch.randn(1, 1, 32, 32, 32)
    with force_backend("reference"), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net.train()(x)
        y = net.eval()(x)
    assert all(torch.isfinite(t).all() for t in flat_outputs(out))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


# ----------------------------------------------------------------------------- conventions of the blocks
def test_fsad_replaces_only_the_query_stages():
    net = small_model(fsad_query_stages=2, fsad_layers=1)
    feats = [torch.randn(1, c, s, s, s) for c, s in zip(net.widths, (8, 4, 2, 1))]
    with force_backend("reference"), torch.no_grad():
        out = net.fsad(feats)
    assert out[0] is feats[0] and out[1] is feats[1]
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert not torch.equal(out[2], feats[2]) and not torch.equal(out[3], feats[3])

def test_voxel_centres_sample_their_own_voxels():
    """Reference points at ``voxel_centres`` read back each voxel, in flatten order, through the
    deformable-attention sampling rule (``grid_sample`` at ``2 loc - 1``, align_corners=False)."""
    vol = torch.randn(1, 2, 3, 4, 5)
    ref = voxel_centres((3, 4, 5))
    assert ref.shape == (60, 3)
    torch.testing.assert_close(ref[1], torch.tensor([1.5 / 5, 0.5 / 4, 0.5 / 3]))  # (x, y, z) = (W, H, D)
    grid = (2 * ref - 1).view(1, 1, 1, 60, 3)
    sampled = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(sampled.view(2, 60), vol.view(2, 60))


def test_sine_position_embedding_3d():
    pos = sine_position_embedding_3d((2, 3, 4), 32)
    feats = 2 * math.ceil(32 / 6)  # 12 per axis: x, y, z, cut to 32
    assert pos.shape == (24, 32)
    x = (torch.arange(4) + 0.5) / 4 * 2 * math.pi
    torch.testing.assert_close(pos[:4, 0], x.sin())
    torch.testing.assert_close(pos[:4, 1], x.cos())
    assert torch.unique(pos[:, feats], dim=0).numel() == 3  # first y channel varies with H only
    assert len({tuple(r.tolist()) for r in pos}) == 24  # every voxel distinct


def test_masked_attention_mask():
    logits = torch.full((2, 3, 2, 2, 2), -1.0)
    logits[0, 0, 0, 0, 0] = 2.0  # query 0 of sample 0 sees one coarse voxel
    logits[1, 1] = 1.0  # query 1 of sample 1 sees everything
    mask = masked_attention_mask(logits, (4, 4, 4), num_heads=2)
    assert mask.shape == (4, 3, 64) and mask.dtype == torch.bool
    for n in range(2):
        torch.testing.assert_close(mask[2 * n], mask[2 * n + 1])  # batch-major: row n * heads + h
    allowed = ~mask[0, 0].view(4, 4, 4)
    assert allowed[:1, :1, :1].all() and allowed.sum() < 64  # the upsampled corner, not all
    assert not mask[0, 1].any() and not mask[0, 2].any()  # rows that blocked everything are unblocked
    assert not mask[2, 1].any() and not mask[2, 0].any()


# ----------------------------------------------------------------------------- registry and errors
def test_registry_builds_maskmed_and_ignores_deep_supervision():
    net = create_model("maskmed", 3, 2, 4, deep_supervision=True, **SMALL)
    assert isinstance(net, MaskMed) and net.in_channels == 2 and net.num_queries == 4
    assert net.size_multiple == 8 and net.output_strides == (4, 2, 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="MaskMed is 3D only: spatial_dims must be 3, got 2"):
        create_model("maskmed", 2, 1, 3)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        MaskMed(3, 0, 3)
    with pytest.raises(ValueError, match=r"blocks_per_stage must be 4 positive ints"):
        MaskMed(3, 1, 3, widths=(8, 16, 32, 32), blocks_per_stage=(1, 1, 1))
    with pytest.raises(ValueError, match=r"num_query_stages must be an int in 1\.\.4"):
        small_model(fsad_query_stages=5)
    with pytest.raises(ValueError, match=r"cross_attention_stages must be an int in 1\.\.3"):
        small_model(cross_attention_stages=0)
    with pytest.raises(ValueError, match="norm_groups=5 must divide hidden_dim=32"):
        small_model(norm_groups=5)
    with pytest.raises(ValueError, match="must be a multiple of 8"):
        small_model(fsad_heads=8)  # head dim 4
    with pytest.raises(TypeError, match="criterion_kwargs must be a dict"):
        small_model(criterion_kwargs=[("no_object_weight", 0.1)])


def test_bad_inputs():
    net = small_model()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net([[0.0]])
    with pytest.raises(ValueError, match=r"x must be 5-D \(N, C, D, H, W\), got shape \(1, 1, 32, 32\)"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x has 2 channels but the model was built with in_channels=1; "
                                         r"expected \(N, 1, D, H, W\)"):
        net(torch.randn(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match=r"multiples of size_multiple=8 .* got \(32, 36, 32\)"):
        net(torch.randn(1, 1, 32, 36, 32))
