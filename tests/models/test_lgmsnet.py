"""LGMSNet: exact released parameter count, 2D/3D shapes with odd sizes, deep supervision, the
Triton-vs-reference path on the LMS depthwise kernels, GMS unfolding, and input errors."""
import pytest
import torch

from segfuse.kernels import force_backend
from segfuse.models import LGMSNet, create_model
from segfuse.models.blocks.gms import fold_patches, unfold_patches
from segfuse.models.blocks.lms import LMSBlock

from _model_checks import assert_paths_match

# narrow widths keep the interpreter runs short; the topology is the released one
TINY = dict(dims=(4, 4, 4, 8, 8), splits=((6, 2), (6, 2), (6, 2), (3, 1)))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_param_count_2d_released():
    assert n_params(LGMSNet(2, 3, 1)) == 2_321_393  # paper: 2.32 M


def test_param_count_3d():
    # SegmsNet3D (BTCV): 1 input channel, 14 classes; InstanceNorm has no parameters
    assert n_params(LGMSNet(3, 1, 14)) == 6_193_742


def test_deep_supervision_off_adds_nothing():
    net = LGMSNet(2, 3, 1)
    assert not hasattr(net, "aux_heads")
    ds = LGMSNet(2, 3, 1, deep_supervision=True)
    assert n_params(ds) == 2_321_393 + (128 + 1) + (64 + 1) + (32 + 1)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (1, 3, 37, 45)), (3, (1, 1, 18, 20, 22))], ids=["2d", "3d"])
def test_odd_sizes_inference_and_deep_supervision(spatial_dims, shape):
    net = LGMSNet(spatial_dims, shape[1], 2, deep_supervision=True)
    x = torch.randn(shape)
    with force_backend("reference"):
        net.eval()
        with torch.no_grad():
            y = net(x)
        assert isinstance(y, torch.Tensor) and y.shape == (1, 2, *shape[2:])  # eval: aux heads skipped
        net.train()
        outs = net(x)
    assert isinstance(outs, list) and len(outs) == 4
    sp = shape[2:]
    for o, s in zip(outs, net.output_strides):
        assert o.shape == (1, 2, *[-(-n // s) for n in sp])
    assert torch.isfinite(outs[-1]).all()


def test_registry_builds_lgmsnet():
    net = create_model("lgmsnet", 2, 1, 3, deep_supervision=True, **TINY)
    assert isinstance(net, LGMSNet) and net.deep_supervision and net.num_classes == 3


def test_kernel_path_matches_reference_2d():
    """Forward + backward of the whole 2D network through the Triton kernels (interpreter on CPU)."""
    torch.manual_seed(0)
    net = LGMSNet(2, 3, 2, **TINY).eval()
    assert_paths_match(net, torch.randn(1, 3, 31, 29))


def test_kernel_path_matches_reference_lms_3d():
    """The 3D network's only kernel-backed layer (LMS), through the 3D kernel. Kernels 1/3 instead of
    3/5/7/9: the interpreter spends ~k^3 steps per voxel slice, and a 9^3 run takes minutes; the kernel's
    own tests cover the 3D sizes."""
    torch.manual_seed(0)
    blk = LMSBlock(3, 4, kernel_sizes=(1, 3), norm="instance").eval()
    assert_paths_match(blk, torch.randn(1, 4, 3, 4, 5))


@pytest.mark.parametrize("d", [2, 3])
def test_unfold_is_stride2_dilation_and_fold_inverts(d):
    sp = (4, 6) if d == 2 else (2, 4, 6)
    x = torch.randn(2, 5, *sp)
    t = unfold_patches(x, 2)
    assert t.shape == (2, 2 ** d, x[0, 0].numel() // 2 ** d, 5)
    offsets = [(i, j) for i in range(2) for j in range(2)] if d == 2 else \
        [(i, j, k) for i in range(2) for j in range(2) for k in range(2)]
    for p, off in enumerate(offsets):
        sl = (slice(None), slice(None)) + tuple(slice(o, None, 2) for o in off)
        torch.testing.assert_close(t[:, p], x[sl].flatten(2).transpose(1, 2))
    torch.testing.assert_close(fold_patches(t, sp, 2), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        LGMSNet(1, 3, 1)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        LGMSNet(2, 0, 1)
    with pytest.raises(ValueError, match="dims must be 5 widths"):
        LGMSNet(2, 3, 1, dims=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="split must be two positive ints summing to out_channels=128"):
        LGMSNet(2, 3, 1, splits=((96, 16), (96, 32), (96, 32), (48, 16)))
    with pytest.raises(ValueError, match="norm must be one of .*did you mean 'batch'"):
        LGMSNet(2, 3, 1, norm="bacth")
    with pytest.raises(ValueError, match="did you mean 'lgmsnet'"):
        create_model("lgmsnt", 2, 3, 1)


def test_bad_inputs():
    net = LGMSNet(2, 3, 1, **TINY)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net([[0.0]])
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\) for spatial_dims=2"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="x has 1 channels but the model was built with in_channels=3"):
        net(torch.randn(1, 1, 32, 32))
