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
