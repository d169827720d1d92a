"""FIAS supervision (``FIASLoss``) against MONAI's DiceCELoss on hand-built subset averages, both backends."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as MonaiDiceCE

from segfuse.kernels import force_backend
from segfuse.losses import FIASLoss
from segfuse.testing import assert_verbose_allclose


def _expected(maps, target, combine):
    """0.6 CE + 0.4 Dice (MONAI: softmax, batch Dice, plain denominators) on main + each aux subset / 7."""
    ref = MonaiDiceCE(to_onehot_y=True, softmax=True, batch=True, squared_pred=False, lambda_dice=0.4,
                      lambda_ce=0.6, smooth_nr=1e-5, smooth_dr=1e-5)
    size = target.shape[1:]
    mode = "bilinear" if target.dim() == 3 else "trilinear"
    up = [m if tuple(m.shape[2:]) == tuple(size) else F.interpolate(m, size=size, mode=mode, align_corners=False)
          for m in maps]
    y = target[:, None]
    aux = up[:-1]
    subs = [s for k in range(1, len(aux) + 1) for s in itertools.combinations(range(len(aux)), k)]
    total = ref(up[-1], y)
    for s in subs:
        z = sum(aux[i] for i in s)
        if combine == "mean":
            z = z / len(s)
        total = total + ref(z, y) / len(subs)
    return total


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("combine", ["mean", "sum"])
@pytest.mark.parametrize("dims", [2, 3])
def test_fias_loss_matches_monai_recomputation(backend, combine, dims):
    g = torch.Generator().manual_seed(0)
    fine = (12, 10) if dims == 2 else (6, 4, 8)
    sizes = [tuple(s // 2 for s in fine), fine, fine, fine] if dims == 2 else [tuple(s // 2 for s in fine), fine, fine, fine]
    maps = [torch.randn(2, 4, *s, generator=g, requires_grad=True) for s in sizes]
    target = torch.randint(0, 4, (2, *fine), generator=g)
    with force_backend(backend):
        got = FIASLoss(4, aux_combine=combine)(maps, target)
        grads = torch.autograd.grad(got, maps)
    want = _expected(maps, target, combine)
    want_grads = torch.autograd.grad(want, maps)
    assert_verbose_allclose(got, want, 1e-5, 1e-5, "loss")
    for i, (a, e) in enumerate(zip(grads, want_grads)):
        assert_verbose_allclose(a, e, 1e-6, 1e-4, f"grad map {i}")


def test_fias_loss_bad_input():
    loss = FIASLoss(4)
    with pytest.raises(ValueError, match="num_maps=4"):
        loss([torch.randn(1, 2, 4, 4)] * 3, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="aux_combine"):
        FIASLoss(4, aux_combine="avg")
    with pytest.raises(ValueError, match="num_maps"):
        FIASLoss(1)
    with pytest.raises(ValueError, match="outside"):
        loss([torch.randn(1, 2, 4, 4)] * 4, torch.full((1, 4, 4), 5, dtype=torch.long))


def test_fias_loss_names_cover_the_seven_subsets():
    names = FIASLoss(4).names
    assert names[0] == "main" and len(names) == 8 and names[-1] == "mean(aux0,aux1,aux2)"
