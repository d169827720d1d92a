"""FIAS: default size (parameters, FLOPs), shapes per stage and per output, the shift-based MSDA against
DilateFormer's literal ``nn.Unfold`` attention, the DMK fused depthwise layer against plain convs, the
Triton-vs-reference path of a training step, a gradient for every parameter, and input errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from segfuse.kernels import force_backend, use_triton
from segfuse.models import FIAS, create_model, resize_logits
from segfuse.models.blocks.dilateformer import MultiScaleDilatedAttention, dilated_attention
from segfuse.models.blocks.dmk import DMKBlock
from segfuse.models.blocks.fias_decoder import ContextAwareFusion, head_count
from segfuse.testing import assert_verbose_allclose

from _model_checks import fwd_bwd

# DilateFormer stage widths 6/12/24/48 (3 heads: one per dilation), DMK / decoder width 8, one block per stage
TINY = dict(widths=(8, 8, 8, 8), embed_dim=6, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3), stem_hidden=4,
            decoder_heads=(2, 2, 2, 2))

DEFAULT_PARAMS = 20_886_605
DEFAULT_FLOPS_224 = 9_287_812_864  # FlopCounterMode, SDPA on the math backend (see the test)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- size of the default model
def test_default_param_count_and_flops():
    """DilateFormer-tiny + DMK (32..256) + CAF + MixAtt, 1 -> 9 channels, at 1x1x224x224.

    Counted on the meta device (shapes only: the count of a CPU run, without the compute). FlopCounterMode counts
    matmuls and convolutions (2 FLOPs per multiply-add); SDPA runs on the math backend so the attention
    matmuls are counted (the CPU flash kernel has no FLOP formula). Not counted: elementwise work, including
    MSDA's 9-neighbour products (2 x 9 x C x HW MACs per layer, ~0.03 GFLOPs in all), and the custom ops
    (the fused DW5 + DW7, ~0.02 GFLOPs; Monte-Carlo attention, negligible)."""
    net = FIAS(2, 1, 9).eval()
    params = n_params(net)
    net, x = net.to("meta"), torch.randn(1, 1, 224, 224, device="meta")
    with force_backend("reference"), torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), \
            FlopCounterMode(display=False) as counter:
        y = net(x)
    flops = counter.get_total_flops()
    print(f"\nFIAS default: {params:,} parameters, {flops:,} FLOPs ({flops / 1e9:.2f} GFLOPs) at 1x1x224x224")
    assert y.shape == (1, 9, 224, 224)
    assert params == DEFAULT_PARAMS
    assert n_params(net.global_encoder) == 16_660_304  # released DilateFormer-tiny (1 in-channel) minus norm / head
    assert flops == DEFAULT_FLOPS_224
    ds = FIAS(2, 1, 9, deep_supervision=True, depths=(1, 1, 1, 1))  # same heads, fewer blocks: faster init
    assert n_params(ds) == n_params(FIAS(2, 1, 9, depths=(1, 1, 1, 1))) + (256 + 128 + 64 + 3) * 9


# ----------------------------------------------------------------------------- shapes
def test_stage_and_output_shapes():
    net = create_model("fias", 2, 1, 3, deep_supervision=True, **TINY)
    assert isinstance(net, FIAS) and net.size_multiple == 32 and net.output_strides == (32, 16, 8, 4)
    x = torch.randn(2, 1, 64, 96)
    with force_backend("reference"):
        net.train()
        glob = net.global_encoder(x)
        loc = net.local_encoder(x)
        assert [tuple(f.shape) for f in glob] == [(2, 6, 16, 24), (2, 12, 8, 12), (2, 24, 4, 6), (2, 48, 2, 3)]
        assert [tuple(f.shape) for f in loc] == [(2, 8, 16, 24), (2, 8, 8, 12), (2, 8, 4, 6), (2, 8, 2, 3)]
        outs = net(x)
        assert isinstance(outs, list) and len(outs) == 4
        assert [tuple(o.shape) for o in outs] == [(2, 3, 2, 3), (2, 3, 4, 6), (2, 3, 8, 12), (2, 3, 16, 24)]
        for o, s in zip(outs, net.output_strides):
            assert o.shape[2:] == (64 // s, 96 // s)
        assert all(tuple(f.shape) == (2, 3, 64, 96) for f in resize_logits(outs, (64, 96), net.output_strides))
        with torch.no_grad():
            y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 64, 96) and torch.isfinite(y).all()
    # without deep supervision, training mode returns the one upsampled map
    plain = FIAS(2, 1, 3, deep_supervision=False, **TINY).train()
    with force_backend("reference"):
        out = plain(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 64, 96)
    assert not hasattr(plain, "aux_heads")


def test_default_model_widths_heads_and_forward():
    torch.manual_seed(0)
    net = FIAS(2, 1, 9).eval()
    with force_backend("reference"), torch.no_grad():
        y = net(torch.randn(1, 1, 64, 96))
    assert y.shape == (1, 9, 64, 96) and torch.isfinite(y).all()
    assert net.global_encoder.channels == (72, 144, 288, 576) and net.local_encoder.channels == (32, 64, 128, 256)
    assert net.decoder.num_heads == (8, 4, 4, 2)  # 6 does not divide 128 -> 4
    assert [f.reduce.in_channels for f in net.fusions] == [104, 208, 416, 832]
    assert head_count(128, 6) == 4 and head_count(64, 4) == 4 and head_count(10, 4) == 2 and head_count(3, 8) == 3


# ----------------------------------------------------------------------------- MSDA vs nn.Unfold
def unfold_dilate_attention(q, k, v, head_dim, dilation, kernel_size=3):
    """DilateFormer's released ``DilateAttention.forward`` (``q, k, v (B, d, H, W)`` -> ``(B, H, W, d)``)."""
    B, d, H, W = q.shape
    unfold = nn.Unfold(kernel_size, dilation, dilation * (kernel_size - 1) // 2, 1)
    kk = kernel_size * kernel_size
    q = q.reshape(B, d // head_dim, head_dim, 1, H * W).permute(0, 1, 4, 3, 2)
    k = unfold(k).reshape(B, d // head_dim, head_dim, kk, H * W).permute(0, 1, 4, 2, 3)
    attn = ((q @ k) * head_dim ** -0.5).softmax(dim=-1)
    v = unfold(v).reshape(B, d // head_dim, head_dim, kk, H * W).permute(0, 1, 4, 3, 2)
    return (attn @ v).transpose(1, 2).reshape(B, H, W, d)


def unfold_msda(m: MultiScaleDilatedAttention, x):
    """Released ``MultiDilatelocalAttention.forward`` with ``m``'s weights (``x (B, H, W, C)``)."""
    B, H, W, C = x.shape
    G = len(m.dilations)
    qkv = m.qkv(x.permute(0, 3, 1, 2)).reshape(B, 3, G, C // G, H, W).permute(2, 1, 0, 3, 4, 5)
    out = [unfold_dilate_attention(qkv[i][0], qkv[i][1], qkv[i][2], m.head_dim, r) for i, r in enumerate(m.dilations)]
    return m.proj(torch.stack(out, dim=3).reshape(B, H, W, C))


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 5), (2, 3)], ids=["7x5", "2x3"])
def test_dilated_attention_matches_unfold(dilation, size):
    """Forward and q/k/v gradients, odd sizes, sizes smaller than the dilated window (border padding)."""
    torch.manual_seed(dilation)
    B, h, d = 2, 2, 3
    q, k, v = (torch.randn(B, h * d, *size, dtype=torch.float64, requires_grad=True) for _ in range(3))
    shp = (B, h, d, *size)
    out = dilated_attention(q.reshape(shp), k.reshape(shp), v.reshape(shp), dilation)
    ref = unfold_dilate_attention(q, k, v, d, dilation).permute(0, 3, 1, 2).reshape(shp)
    assert_verbose_allclose(out, ref, atol=1e-12, rtol=1e-10, name="MSDA forward")
    g = torch.randn(shp, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, e in zip("qkv", grads, grads_ref):
        assert_verbose_allclose(a, e, atol=1e-12, rtol=1e-10, name=f"grad {name}")


def test_msda_module_matches_unfold():
    torch.manual_seed(0)
    m = MultiScaleDilatedAttention(18, 6).double()
    x = torch.randn(2, 9, 11, 18, dtype=torch.float64, requires_grad=True)
    out, ref = m(x), unfold_msda(m, x)
    assert_verbose_allclose(out, ref, atol=1e-12, rtol=1e-10, name="MSDA module")
    g = torch.randn_like(out)
    params = [x] + list(m.parameters())
    for a, e in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        assert_verbose_allclose(a, e, atol=1e-12, rtol=1e-10, name="MSDA grad")


# ----------------------------------------------------------------------------- DMK and CAF semantics
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_dmk_block_equals_plain_depthwise_convs(train):
    torch.manual_seed(0)
    blk = DMKBlock(3, 4, stride=2).train(train)
    x = torch.randn(2, 3, 10, 12)
    with force_backend("reference"):
        y = blk(x)
    w5, w7 = blk.dwconv.weights
    t = blk.local(x)
    mixed = t + F.conv2d(t, w5, padding=2, groups=4) + F.conv2d(t, w7, padding=3, groups=4)
    expected = blk.proj(blk.bn(mixed))
    assert_verbose_allclose(y, expected, atol=1e-5, rtol=1e-5, name="DMK")


def test_caf_formula():
    torch.manual_seed(0)
    caf = ContextAwareFusion(3, 5, 4).eval()
    lo, gl = torch.randn(2, 3, 6, 7), torch.randn(2, 5, 6, 7)
    f = caf.reduce(torch.cat((lo, gl), 1))
    mlp = lambda t: caf.fc2(torch.relu(caf.fc1(t)))  # noqa: E731
    f = f * torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
    f = f * torch.sigmoid(caf.spatial(f))
    assert_verbose_allclose(caf(lo, gl), caf.out(f), atol=1e-6, rtol=1e-5, name="CAF")


# ----------------------------------------------------------------------------- kernels vs reference, gradients
def test_training_step_kernel_path_matches_reference():
    """A deep-supervised training step (train mode: Dropout2d and the Monte-Carlo draws live) through the
    Triton kernels (DMK depthwise, Monte-Carlo attention; interpreter on CPU) and through the reference
    path. The global RNG is seeded identically before each path, so both draw the same dropout masks and
    the same Monte-Carlo subsets. BatchNorm uses its running statistics (as the EMCAD test): batch
    statistics over the 1 x 1 map at 1/32 would amplify float rounding into the comparison."""
    torch.manual_seed(0)
    net = FIAS(2, 1, 3, deep_supervision=True, **TINY).train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = torch.randn(1, 1, 32, 32)
    if not use_triton(x.device):
        pytest.skip("the Triton path does not run on cpu here (CPU needs TRITON_INTERPRET=1)")
    torch.manual_seed(123)
    out_t, g_t = fwd_bwd(net, x, "auto")
    torch.manual_seed(123)
    out_r, g_r = fwd_bwd(net, x, "reference")
    assert len(out_t) == 4
    for i, (a, e) in enumerate(zip(out_t, out_r)):
        assert_verbose_allclose(a, e, atol=1e-4, rtol=1e-4, name=f"output[{i}]")
    assert g_t.keys() == g_r.keys() == {n for n, _ in net.named_parameters()}
    for name in g_r:
        assert_verbose_allclose(g_t[name], g_r[name], atol=1e-4, rtol=1e-4, name=f"grad {name}")


@pytest.mark.parametrize("variant,drop_path,ds",
                         [("channel", 0.0, True), ("spatial", 0.5, True), ("channel", 0.0, False)],
                         ids=["mca-channel", "mca-spatial-droppath", "no-deep-supervision"])
def test_every_parameter_gets_a_gradient(variant, drop_path, ds):
    """DDP without find_unused_parameters needs a grad for every parameter in every step (also with
    stochastic depth: a dropped branch still gets a zero gradient)."""
    net = FIAS(2, 2, 3, deep_supervision=ds, mca_variant=variant, drop_path_rate=drop_path, **TINY).train()
    with force_backend("reference"):
        outs = net(torch.randn(2, 2, 64, 32))
        outs = outs if ds else [outs]
        sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# ----------------------------------------------------------------------------- errors
def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims must be 2 \\(DilateFormer"):
        FIAS(3, 1, 9)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        create_model("fias", 3, 1, 9)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        FIAS(2, 0, 9)
    with pytest.raises(ValueError, match="widths must be 4 positive ints"):
        FIAS(2, 1, 9, widths=(32, 64, 128))
    with pytest.raises(ValueError, match=r"num_heads\[1\]=4 must be a multiple of len\(dilations\)=3"):
        FIAS(2, 1, 9, num_heads=(3, 4, 12, 24))
    with pytest.raises(ValueError, match=r"num_heads\[2\]=7 must divide the stage width"):
        FIAS(2, 1, 9, num_heads=(3, 6, 7, 24))
    with pytest.raises(ValueError, match="decoder_heads must be 4 positive ints"):
        FIAS(2, 1, 9, decoder_heads=(6, 4, 2))
    with pytest.raises(ValueError, match="did you mean 'spatial'"):
        FIAS(2, 1, 9, mca_variant="spatail")


def test_bad_inputs():
    net = FIAS(2, 1, 2, **TINY)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net([[0.0]])
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\) for spatial_dims=2"):
        net(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="x has 3 channels but the model was built with in_channels=1"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"multiple of size_multiple=32 .*got \(48, 64\)"):
        net(torch.randn(1, 1, 48, 64))
