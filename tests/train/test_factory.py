"""Models and the supervision modes (single, deep, lomix, fias; a model's own criterion) give finite losses and gradients (eager path)."""
import math

import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.kernels.multi_logit_loss import LOMIX_OPS as OPS, map_names, num_supervised_maps
from torch import nn

from segfuse.models import create_model, list_models
from segfuse.training.factory import build_loss, loss_weights, optimizer_groups, size_multiple


@pytest.mark.parametrize("supervision", ["single", "deep", "lomix", "fias"])
def test_unet_losses_backward(supervision):
    deep = supervision != "single"
    model = create_model("unet", 2, 1, 4, deep_supervision=deep).train()
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    out = model(x)
    num_maps = len(out) if deep else 1
    fn, mod = build_loss(supervision, num_maps, 4, 2)
    with force_backend("reference"):
        loss = fn(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if supervision != "lomix":
        assert loss_weights(mod) == {}  # fixed weights: nothing learned to report
        return
    # one entry per supervised map (M base maps + one per operator and subset), named and ordered as LoMix
    names = map_names(num_maps, OPS)
    n_subsets = 2 ** num_maps - num_maps - 1  # subsets of size >= 2
    assert len(names) == num_supervised_maps(num_maps, OPS) == mod.raw_weights.numel() \
        == num_maps + len(OPS) * n_subsets
    # distinct raw weights (as after training) so that an off-by-one, a reordering or a different
    # transform shows; the reported weight of map t is softplus(raw_t), computed here independently
    with torch.no_grad():
        mod.raw_weights.copy_(torch.linspace(-3.0, 2.0, mod.raw_weights.numel()))
    w = loss_weights(mod)
    assert list(w) == names
    expected = F.softplus(mod.raw_weights.detach().double()).tolist()
    for name, want in zip(names, expected):
        got = w[name]
        assert isinstance(got, float) and math.isfinite(got) and got > 0, (name, got)
        assert got == pytest.approx(want, rel=1e-6), (name, got, want)


def test_registered_2d_model_trains_one_step():
    if "lgmsnet" not in list_models():
        pytest.fail("segfuse.models does not register 'lgmsnet'")
    with force_backend("reference"):
        model = create_model("lgmsnet", 2, 1, 3, deep_supervision=True).train()
        out = model(torch.randn(1, 1, 32, 32))
        assert isinstance(out, (list, tuple)) and out[-1].shape == (1, 3, 32, 32)
        fn, _ = build_loss("deep", len(out), 3, 2)
        loss = fn(out, torch.randint(0, 3, (1, 32, 32)))
        loss.backward()
    assert torch.isfinite(loss)


def test_unknown_names():
    with pytest.raises(ValueError):
        build_loss("triple", 1, 2, 2)
    with pytest.raises(ValueError):
        create_model("no_such_model", 2, 1, 2)


def test_size_multiple_is_the_models_attribute():
    assert size_multiple(create_model("unet", 2, 1, 2, channels=(8, 16, 32, 64))) == 8
    with pytest.raises(TypeError, match="Conv2d has no size_multiple"):
        size_multiple(nn.Conv2d(1, 2, 3))


class _TwoPartNet(nn.Module):
    """A model that brings its own criterion and CNN / transformer parameter groups (as MaskMed)."""
    default_transformer_lr_scale = 0.1

    def __init__(self, cover_all=True):
        super().__init__()
        self.conv, self.attn, self.cover_all = nn.Conv2d(1, 2, 3), nn.Linear(2, 2), cover_all

    def criterion(self):
        return nn.MSELoss()

    def param_groups(self):
        return {"cnn": list(self.conv.parameters()),
                "transformer": list(self.attn.parameters()) if self.cover_all else [self.attn.weight]}


def test_model_criterion_and_lr_groups():
    net = _TwoPartNet()
    fn, mod = build_loss("single", 1, 2, 2, model=net)
    assert isinstance(fn, nn.MSELoss) and fn is mod
    with pytest.raises(ValueError, match="brings its own criterion"):
        build_loss("deep", 1, 2, 2, model=net)
    groups = optimizer_groups(net, mod, None)
    assert [(g["name"], g["lr_scale"], len(g["params"])) for g in groups] == [("cnn", 1.0, 2), ("transformer", 0.1, 2)]
    assert optimizer_groups(net, mod, 0.5)[1]["lr_scale"] == 0.5
    with pytest.raises(ValueError, match="transformer-lr-scale"):
        optimizer_groups(net, mod, 0.0)
    with pytest.raises(RuntimeError, match="covers 3 of 4"):
        optimizer_groups(_TwoPartNet(cover_all=False), mod, None)
    # a plain model: one group at the base rate, the loss's learnable weights included
    lomix_fn, lomix = build_loss("lomix", 3, 4, 2)
    (g,) = optimizer_groups(create_model("unet", 2, 1, 4), lomix, None)
    assert g["lr_scale"] == 1.0 and any(p is lomix.raw_weights for p in g["params"])
