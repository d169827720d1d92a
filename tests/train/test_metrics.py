"""Dice/HD95 values and the empty-mask conventions documented in segfuse.metrics."""
import math

import numpy as np
import pytest

from segfuse.metrics import dice_score, hd95, nanmean, per_class_metrics


def test_dice_values_and_conventions():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True            # 16
    b[2:6, 2:4] = True            # 8, inside a
    assert dice_score(a, b) == pytest.approx(2 * 8 / 24)
    assert math.isnan(dice_score(np.zeros(4, bool), np.zeros(4, bool)))
    assert dice_score(a, np.zeros_like(a)) == 0.0


def test_hd95_shifted_cube_with_spacing():
    a = np.zeros((30, 30, 30), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 3, axis=0)
    assert hd95(a, a) == 0.0
    assert hd95(a, b, spacing=(1, 1, 1)) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2, 1, 1)) == pytest.approx(6.0)       # spacing along the shift axis
    assert math.isnan(hd95(np.zeros_like(a), np.zeros_like(a)))
    diag = math.sqrt((30 * 2) ** 2 + 30 ** 2 + 30 ** 2)
    assert hd95(a, np.zeros_like(a), spacing=(2, 1, 1)) == pytest.approx(diag)


def test_per_class_metrics_and_nanmean():
    gt = np.zeros((20, 20), np.int16)
    gt[2:8, 2:8] = 1
    pred = gt.copy()
    m = per_class_metrics(pred, gt, 3, spacing=(1, 1))
    assert m[1] == {"dice": 1.0, "hd95": 0.0}
    assert math.isnan(m[2]["dice"]) and math.isnan(m[2]["hd95"])
    assert nanmean([m[1]["dice"], m[2]["dice"]]) == 1.0
    with pytest.raises(ValueError, match="shape"):
        per_class_metrics(pred, gt[:10], 3)


def _blob(shape, seed):
    """A random smooth-ish blob mask (thresholded, box-filtered noise)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    return ndimage.uniform_filter(rng.random(shape), size=5) > 0.52


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape, spacing", [((23, 31), (1.0, 1.0)), ((11, 17, 14), (2.0, 0.8, 1.3))],
                         ids=["2d", "3d-anisotropic"])
def test_hd95_monai_convention_equals_monai(seed, shape, spacing):
    """convention="monai" is MONAI's compute_hausdorff_distance(percentile=95) on random masks (and the default
    pools both directions, as medpy: never above MONAI's larger one-way percentile)."""
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch
    p, g = _blob(shape, seed), _blob(shape, seed + 100)
    if not (p.any() and g.any()):
        pytest.skip("an empty random mask")
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m]))[None].float()  # noqa: E731
    want = float(monai_metrics.compute_hausdorff_distance(one_hot(p), one_hot(g), percentile=95,
                                                          spacing=list(spacing))[0, 0])
    assert hd95(p, g, spacing, convention="monai") == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert hd95(p, g, spacing) <= want + 1e-6


def test_hd95_monai_convention_one_empty_mask_is_nan():
    a = np.zeros((12, 12), bool)
    a[3:7, 3:7] = True
    assert math.isnan(hd95(a, np.zeros_like(a), convention="monai"))
    assert math.isnan(hd95(np.zeros_like(a), a, convention="monai"))
    assert hd95(a, np.zeros_like(a)) == pytest.approx(math.hypot(12, 12))
    with pytest.raises(ValueError, match="convention must be one of"):
        hd95(a, a, convention="scipy")
