"""EMCAD + PVT-v2-b2: MSCB's fused depthwise layout equals the released per-branch block, output
shapes (native-resolution deep supervision, upsampled inference, odd sizes), the Triton-vs-reference
path, local weight loading, and input errors."""
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segfuse.kernels import force_backend
from segfuse.models import EMCADPVT, create_model, resize_logits
from segfuse.models.blocks.common import channel_shuffle
from segfuse.models.blocks.emcad import MSCB, EMCADDecoder
from segfuse.testing import assert_verbose_allclose

from _model_checks import assert_paths_match


class StubEncoder(nn.Module):
    """Four maps at strides 4, 8, 16, 32 (shallowest first), like a timm ``features_only`` model."""

    def __init__(self, channels=(2, 2, 2, 2)):
        super().__init__()
        chans = (3,) + tuple(channels)
        self.stages = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 4 if i == 0 else 2, 4 if i == 0 else 2)
                                    for i in range(4))

    def forward(self, x):
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


def tiny_emcad(deep_supervision, **kw):
    return EMCADPVT(2, 1, 3, deep_supervision=deep_supervision, encoder_module=StubEncoder(),
                    encoder_channels=(2, 2, 2, 2), **kw)


def _timm_or_skip():
    """timm is a hard dependency: it must import (through the torchvision shim where needed)."""
    from segfuse.compat import import_timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        import_timm()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mscb_faithful_equals_released_branches(train):
    """One grouped launch on the replicated input + one BN = three (DW_k -> BN_k -> ReLU6) branches."""
    torch.manual_seed(0)
    C, ks = 4, (1, 3, 5)
    blk = MSCB(2, C, ks, expansion_factor=2)
    for m in blk.modules():  # non-trivial BN so a wrong channel mapping shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    blk.train(train)
    x = torch.randn(2, C, 7, 6)
    E = 2 * C
    with force_backend("reference"):
        y = blk(x)
    bn = blk.dw_norm
    with torch.no_grad():
        h = blk.pconv1(x)
        acc = 0
        for k, w in zip(ks, blk.dwconv.weights):
            sl = slice(ks.index(k) * E, (ks.index(k) + 1) * E)
            z = F.conv2d(h, w, padding=k // 2, groups=E)
            z = F.batch_norm(z, bn.running_mean[sl].clone(), bn.running_var[sl].clone(), bn.weight[sl],
                             bn.bias[sl], training=train, eps=bn.eps)
            acc = acc + F.relu6(z)
        expected = x + blk.pconv2(channel_shuffle(acc, C))
    assert_verbose_allclose(y, expected, atol=1e-5, rtol=1e-5, name="MSCB")


def test_mscb_param_count_matches_released():
    # released MSCB(C=64, kernels 1/3/5, expansion 2): pconv1 64*128 + BN 256; 3 dw (128*(1+9+25))
    # + 3 BN (3*256); pconv2 128*64 + BN 128
    assert sum(p.numel() for p in MSCB(2, 64).parameters()) == 8192 + 256 + 128 * 35 + 768 + 8192 + 128


def test_decoder_param_count_pvt_widths():
    # EMCAD decoder on PVT-v2-b2 widths: 1.91 M (EMCAD paper)
    assert sum(p.numel() for p in EMCADDecoder(2, (512, 320, 128, 64)).parameters()) == 1_913_515


def test_shapes_with_stub_encoder_and_odd_size():
    net = tiny_emcad(True)
    x = torch.randn(2, 1, 50, 70)
    with force_backend("reference"):
        outs = net.train()(x)
        assert [tuple(o.shape) for o in outs] == [(2, 3, 2, 3), (2, 3, 4, 5), (2, 3, 7, 9), (2, 3, 13, 18)]
        with torch.no_grad():
            y = net.eval()(x)
    assert y.shape == (2, 3, 50, 70)
    full = resize_logits(outs, (50, 70), net.output_strides)
    assert all(tuple(f.shape) == (2, 3, 50, 70) for f in full)


def test_inference_only_builds_finest_head():
    assert len(tiny_emcad(False).heads) == 1 and len(tiny_emcad(True).heads) == 4


def test_kernel_path_matches_reference():
    """Forward + backward through the fused MSCB depthwise kernels (interpreter on CPU), DS outputs."""
    torch.manual_seed(0)
    net = tiny_emcad(True, expansion_factor=1).train()
    for m in net.modules():  # BN in eval mode: both paths see the same statistics
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    assert_paths_match(net, torch.randn(1, 1, 32, 32))


def test_pvt_v2_b2_shapes():
    _timm_or_skip()
    net = create_model("emcad_pvt_v2_b2", 2, 1, 9, deep_supervision=True)
    assert tuple(net.encoder.feature_info.channels()) == (64, 128, 320, 512)
    x = torch.randn(1, 1, 64, 64)
    with force_backend("reference"):
        outs = net.train()(x)
        assert [tuple(o.shape) for o in outs] == [(1, 9, 2, 2), (1, 9, 4, 4), (1, 9, 8, 8), (1, 9, 16, 16)]
        with torch.no_grad():
            net.eval()
            assert net(x).shape == (1, 9, 64, 64)
            assert net(torch.randn(1, 1, 45, 51)).shape == (1, 9, 45, 51)


def test_pvt_weights_from_local_file_only(tmp_path, monkeypatch):
    _timm_or_skip()
    import timm

    src = timm.create_model("pvt_v2_b2", pretrained=False)
    path = tmp_path / "pvt_v2_b2.pth"
    torch.save(src.state_dict(), path)

    def no_network(*args, **kwargs):
        raise AssertionError("the model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    net = EMCADPVT(2, 1, 9, weights_path=str(path))
    torch.testing.assert_close(net.encoder.patch_embed.proj.weight, src.patch_embed.proj.weight)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        EMCADPVT(2, 1, 9, weights_path=str(tmp_path / "missing.pth"))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        EMCADPVT(3, 1, 9, encoder_module=StubEncoder(), encoder_channels=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="encoder_module needs encoder_channels"):
        EMCADPVT(2, 1, 9, encoder_module=StubEncoder())
    with pytest.raises(ValueError, match="weights_path is for the timm encoder"):
        tiny_emcad(False, weights_path="pvt_v2_b2.pth")
    with pytest.raises(ValueError, match="did you mean 'faithful'"):
        tiny_emcad(False, mscb_mode="faithfull")
    net = tiny_emcad(False)
    with pytest.raises(ValueError, match="x has 3 channels but the model was built with in_channels=1"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\)"):
        net(torch.randn(1, 1, 32, 32, 32))
