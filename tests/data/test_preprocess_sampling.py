"""Normalisation, resampling, augmentation and patch sampling."""
import numpy as np
import pytest

from segfuse.data.augment import AugmentConfig, augment
from segfuse.data.preprocess import normalize, resample
from segfuse.data.sampling import PatchDataset, Volume, crop_patch, holdout_slices


def test_normalize_ct_window_and_mri_zscore():
    rng = np.random.default_rng(0)
    img = np.stack([rng.uniform(-1000, 1000, (8, 8, 4)), rng.normal(300, 50, (8, 8, 4))]).astype(np.float32)
    out = normalize(img, ["CT", "T1"], ct_window=(-100, 300))
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert np.allclose(out[0][img[0] == np.clip(img[0], -100, 300)],
                       ((img[0] + 100) / 400)[img[0] == np.clip(img[0], -100, 300)])
    assert abs(out[1].mean()) < 1e-5 and abs(out[1].std() - 1) < 1e-4
    with pytest.raises(ValueError, match="channel"):
        normalize(img, ["CT"])


def test_resample_to_spacing():
    img = np.random.default_rng(0).normal(size=(1, 20, 20, 10)).astype(np.float32)
    lab = (np.arange(20 * 20 * 10).reshape(20, 20, 10) % 3).astype(np.int16)
    i2, l2, sp = resample(img, lab, (1.0, 1.0, 2.0), (2.0, 2.0, None))
    assert i2.shape == (1, 10, 10, 10) and l2.shape == (10, 10, 10)
    assert sp == pytest.approx((2.0, 2.0, 2.0))
    assert set(np.unique(l2)) <= {0, 1, 2}


def test_augment_keeps_shapes_and_labels():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 32, 32, 16)).astype(np.float32)
    lab = (rng.random((32, 32, 16)) * 3).astype(np.int16)
    cfg = AugmentConfig(p_flip=1.0, p_rot90=1.0, p_rotate=1.0, p_zoom=1.0, p_intensity=1.0)
    for _ in range(3):
        a, b = augment(img, lab, rng, cfg)
        assert a.shape == img.shape and b.shape == lab.shape and set(np.unique(b)) <= {0, 1, 2}
    # flips only: a pure permutation of voxels
    a, b = augment(img, lab, np.random.default_rng(2), AugmentConfig.preset("flips"))
    assert np.allclose(np.sort(a.ravel()), np.sort(img.ravel()))


def test_patch_dataset_deterministic_and_foreground_oversampled():
    lab = np.zeros((40, 40, 20), np.int16)
    lab[30:33, 5:8, 2:4] = 1                       # a tiny organ in a corner
    img = np.random.default_rng(0).normal(size=(1,) + lab.shape).astype(np.float32)
    ds = PatchDataset([(img, lab)], (16, 16, 8), length=40, seed=4, fg_prob=1.0)
    x, y = ds[7]
    x2, y2 = ds[7]
    assert x.shape == (1, 16, 16, 8) and y.shape == (16, 16, 8) and y.dtype.is_floating_point is False
    assert np.array_equal(x.numpy(), x2.numpy())
    assert all(ds[i][1].sum() > 0 for i in range(10))      # every patch holds the organ
    ds.set_epoch(1)
    assert not np.array_equal(ds[7][0].numpy(), x.numpy())
    bg = PatchDataset([(img, lab)], (16, 16, 8), length=40, seed=4, fg_prob=0.0)
    assert sum(int(bg[i][1].sum() > 0) for i in range(20)) < 10


def test_crop_pads_small_images():
    img = np.ones((1, 10, 12), np.float32)
    lab = np.ones((10, 12), np.int16)
    a, b = crop_patch(img, lab, (16, 16), np.random.default_rng(0))
    assert a.shape == (1, 16, 16) and b.shape == (16, 16) and b.sum() == 120


def test_holdout_every_fifth_foreground_slice():
    lab = np.zeros((4, 4, 30), np.int16)
    lab[..., 5:25] = 1
    v = Volume("c", np.zeros((1, 4, 4, 30), np.float32), lab, (1, 1, 1))
    tr, va = holdout_slices(v, 5)
    assert va == [7, 12, 17, 22] and not set(tr) & set(va) and len(tr) + len(va) == 30
