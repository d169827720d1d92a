"""Sliding-window blending is exact for a pointwise model; 2D slice-wise and 3D paths agree on shapes."""
import numpy as np
import torch

from segfuse.inference import gaussian_importance, predict_volume, sliding_window, window_starts


class Pointwise(torch.nn.Module):
    """1x1 conv: window-independent output, so any blend must equal the direct forward."""

    def __init__(self, nd, k=3):
        super().__init__()
        self.conv = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(1, k, 1)

    def forward(self, x):
        return self.conv(x)


def test_window_starts_cover():
    assert window_starts(10, 16, 0.5) == [0]
    s = window_starts(100, 32, 0.5)
    assert s[0] == 0 and s[-1] == 68 and all(b - a <= 16 for a, b in zip(s, s[1:]))


def test_gaussian_map():
    w = gaussian_importance((8, 12))
    assert w.shape == (8, 12) and float(w.max()) == 1.0 and float(w.min()) >= 1e-3


def test_sliding_window_equals_direct_forward():
    torch.manual_seed(0)
    m = Pointwise(3).eval()
    x = torch.randn(1, 1, 20, 37, 9)
    with torch.no_grad():
        direct = m(x).softmax(1)
        out = sliding_window(lambda t: m(t).softmax(1), x, (16, 16, 16), 3, overlap=0.5)
    assert out.shape == direct.shape
    assert torch.allclose(out, direct, atol=1e-5)


def test_predict_volume_2d_and_3d_with_tta():
    torch.manual_seed(0)
    img = np.random.default_rng(0).normal(size=(1, 24, 20, 5)).astype(np.float32)
    p2 = predict_volume(Pointwise(2), img, 2, (16, 16), 3, tta=True, batch_size=2)
    p3 = predict_volume(Pointwise(3), img, 3, (16, 16, 8), 3, tta=True)
    for p in (p2, p3):
        assert p.shape == (3, 24, 20, 5) and np.allclose(p.sum(0), 1.0, atol=1e-5)
