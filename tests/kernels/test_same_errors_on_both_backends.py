"""Each public API on both backends with the same bad input gives the same exception type and message:
the input guard and the value checks sit above the dispatch, on the one data path both backends share."""
import pytest
import torch

from segfuse.kernels import MultiKernelDWConv, multi_kernel_dwconv
from segfuse.kernels.multi_logit_loss import multi_logit_dice_ce
from segfuse.losses import DeepSupervisionDiceCE, DiceCELoss, LoMixLoss
from segfuse.testing import exception_on_backend


def _w(c, k, d=2, dtype=torch.float32):
    return torch.randn(c, 1, *([k] * d), dtype=dtype)


def _labels(*shape, hi=3):
    return torch.randint(0, hi, shape)


def _bad_label(y, value):
    y = y.clone()
    y.view(-1)[3] = value
    return y


def _nan(x):
    x = x.clone()
    x.view(-1)[5] = float("nan")
    return x


CALLS = {
    # dwconv
    "dwconv-rank": (lambda: multi_kernel_dwconv(torch.randn(4, 6, 6), [_w(4, 3)]), ValueError),
    "dwconv-even-kernel": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6), [_w(2, 3), _w(2, 4)]), ValueError),
    "dwconv-groups": (lambda: multi_kernel_dwconv(torch.randn(1, 6, 6, 6), [_w(1, 3)] * 4), ValueError),
    "dwconv-dtype-mismatch": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6), [_w(4, 3, dtype=torch.float16)],
                                                          mode="summed"), TypeError),
    "dwconv-device": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6), [_w(4, 3).to("meta")], mode="summed"),
                      ValueError),
    "dwconv-mode": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6), [_w(4, 3)], mode="sum"), ValueError),
    "dwconv-bias": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6), [_w(4, 3)], torch.randn(3), mode="summed"),
                    ValueError),
    "dwconv-int-input": (lambda: multi_kernel_dwconv(torch.randn(1, 4, 6, 6).long(), [_w(4, 3)]), TypeError),
    "dwconv-module-rank": (lambda: MultiKernelDWConv(3, 8)(torch.randn(1, 8, 5, 5)), ValueError),
    # fused loss: guard
    "loss-not-divisible": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12), torch.randn(2, 3, 3, 5)],
                                                       _labels(2, 8, 12), torch.zeros(2)), ValueError),
    "loss-weights-shape": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 3, _labels(2, 8, 12),
                                                       torch.zeros(2), ops=("add",)), ValueError),
    "loss-float-target": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)], _labels(2, 8, 12).float(),
                                                      torch.zeros(1)), ValueError),  # dense targets are (B, C, ...)
    "loss-bool-target": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)], _labels(2, 8, 12).bool(),
                                                     torch.zeros(1)), TypeError),
    "loss-smoothing-bce": (lambda: multi_logit_dice_ce([torch.randn(2, 1, 8, 12)], _labels(2, 8, 12).clamp(max=1),
                                                       torch.zeros(1), sigmoid=True, label_smoothing=0.1), ValueError),
    "loss-class-weight-shape": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)], _labels(2, 8, 12),
                                                            torch.zeros(1), class_weight=torch.ones(2)), ValueError),
    "loss-unknown-op": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 2, _labels(2, 8, 12),
                                                    torch.zeros(3), ops=("ad",)), ValueError),
    "loss-missing-param": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12)] * 2, _labels(2, 8, 12),
                                                       torch.zeros(3), ops=("concat",)), ValueError),
    "loss-map-dtypes": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 8, 12), torch.randn(2, 3, 8, 12).half()],
                                                    _labels(2, 8, 12), torch.zeros(2)), TypeError),
    "loss-empty-batch": (lambda: multi_logit_dice_ce([torch.randn(0, 3, 8, 12)], _labels(0, 8, 12), torch.zeros(1)),
                         ValueError),
    "loss-empty-spatial": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 0, 5)], _labels(2, 0, 5), torch.zeros(1)),
                           ValueError),
    # an int64 label that an int32 load would wrap to a valid class (2**32 + 1 -> 1)
    "loss-label-int64-wrap": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 6, 7)],
                                                          _bad_label(_labels(2, 6, 7), 2 ** 32 + 1), torch.zeros(1)),
                              ValueError),
    # fused loss: values, counted in-pass by the kernels and by torch ops on the reference path
    "loss-label-high": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 6, 7)] * 2, _bad_label(_labels(2, 6, 7), 3),
                                                    torch.zeros(2)), ValueError),
    "loss-label-negative": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 6, 7)], _bad_label(_labels(2, 6, 7), -1),
                                                        torch.zeros(1)), ValueError),
    "loss-nan-logits": (lambda: multi_logit_dice_ce([torch.randn(2, 3, 6, 7), _nan(torch.randn(2, 3, 6, 7))],
                                                    _labels(2, 6, 7), torch.zeros(2)), ValueError),
    # the loss modules
    "dicece-labels": (lambda: DiceCELoss()(torch.randn(2, 3, 6, 7), _bad_label(_labels(2, 1, 6, 7), 5)), ValueError),
    "dicece-sigmoid-binary-labels": (lambda: DiceCELoss(sigmoid=True, softmax=False)(
        torch.randn(2, 1, 6, 7), _labels(2, 1, 6, 7, hi=3)), ValueError),
    "deep-supervision-nan": (lambda: DeepSupervisionDiceCE(2)([torch.randn(2, 3, 3, 4), _nan(torch.randn(2, 3, 6, 8))],
                                                              _labels(2, 6, 8)), ValueError),
    "lomix-map-count": (lambda: LoMixLoss(4, 3, 2)([torch.randn(1, 3, 4, 4)] * 3, _labels(1, 4, 4)), ValueError),
    "lomix-labels": (lambda: LoMixLoss(2, 3, 2)([torch.randn(1, 3, 4, 4)] * 2, _bad_label(_labels(1, 4, 4), 7)),
                     ValueError),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_same_exception_on_both_backends(name):
    call, expected = CALLS[name]
    tri = exception_on_backend("triton", call)
    ref = exception_on_backend("reference", call)
    assert tri[0] is not None, f"{name}: the Triton path raised nothing"
    assert issubclass(tri[0], expected), f"{name}: {tri[0].__name__} is not a {expected.__name__}: {tri[1]}"
    assert tri == ref, f"{name}: triton raised {tri}, reference raised {ref}"
