"""MONAI's own DiceLoss / DiceCELoss test cases (tests/losses/monai_cases.py, copied verbatim) on segfuse's
DiceLoss / DiceCELoss, both backends: every case's value as MONAI's test asserts it (DiceLoss rtol 1e-5, DiceCELoss
1e-4), and the input gradient against MONAI's own loss on the same case. Cases MONAI's tests expect to warn for
(a single channel with softmax / to_onehot_y / include_background=False) warn here too.

Tally (``test_case_tally``): 18 DiceLoss + 7 DiceCELoss cases tried, 25 apply, 25 pass, 0 not applicable."""
import warnings

import numpy as np
import pytest
import torch

from monai_cases import DICE_CE_LOSS_CASES, DICE_LOSS_CASES
from segfuse.kernels import force_backend
from segfuse.losses import DiceCELoss, DiceLoss

monai_losses = pytest.importorskip("monai.losses", reason="MONAI's own losses are the second oracle here")

# MONAI's DiceCELoss defaults where segfuse's differ (segfuse: to_onehot_y=True, softmax=True)
MONAI_DICE_CE_DEFAULTS = dict(to_onehot_y=False, sigmoid=False, softmax=False)
CASES = ([("DiceLoss", i, c) for i, c in enumerate(DICE_LOSS_CASES)]
         + [("DiceCELoss", i, c) for i, c in enumerate(DICE_CE_LOSS_CASES)])


def _ours(kind, opts):
    if kind == "DiceLoss":
        return DiceLoss(**opts)
    return DiceCELoss(**{**MONAI_DICE_CE_DEFAULTS, **opts})


def _theirs(kind, opts):
    return getattr(monai_losses, kind)(**opts)


def _run(module, data):
    x = data["input"].clone().float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module(x, data["target"].clone())
    (grad,) = torch.autograd.grad(out.sum(), [x])
    return out.detach(), grad


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("kind, index, case", CASES, ids=[f"{k}-{i}" for k, i, _ in CASES])
def test_monai_case(kind, index, case, backend):
    opts, data, expected = case
    with force_backend(backend):
        got, grad = _run(_ours(kind, opts), data)
    rtol, atol = (1e-5, 0.0) if kind == "DiceLoss" else (1e-4, 1e-4)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=rtol, atol=atol + 1e-7)
    want, want_grad = _run(_theirs(kind, opts), data)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=1e-4, atol=1e-6)


def test_case_tally():
    """The counts the docs report: every case of both MONAI test files is applicable (none skipped)."""
    assert (len(DICE_LOSS_CASES), len(DICE_CE_LOSS_CASES)) == (18, 7)


@pytest.mark.parametrize("kind", ["DiceLoss", "DiceCELoss"])
def test_single_channel_softmax_warns_as_monai(kind):
    x, y = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4)).float()
    with pytest.warns(UserWarning, match="single channel prediction, `softmax=True` ignored"):
        _ours(kind, dict(softmax=True))(x, y)


def test_constructor_errors_as_monai():
    with pytest.raises(ValueError, match="at most one of sigmoid=True, softmax=True, other_act"):
        DiceLoss(sigmoid=True, other_act=torch.tanh)
    with pytest.raises(TypeError, match="other_act must be None or callable"):
        DiceLoss(other_act=3)
    with pytest.raises(ValueError, match="reduction"):
        DiceCELoss(reduction="none")
    with pytest.raises(ValueError, match=r"weight must hold one value per class kept \(2: include_background=False"):
        DiceLoss(include_background=False, to_onehot_y=True, softmax=True, weight=[1.0, 2.0, 3.0])(
            torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 1, 4, 4)))
