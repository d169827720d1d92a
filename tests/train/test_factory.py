"""Models and the three supervision modes give finite losses and gradients (eager path)."""
import math

import pytest
import torch
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.kernels.multi_logit_loss import OPS, map_names, num_supervised_maps
from segfuse.train.factory import available_models, build_loss, build_model, loss_weights


@pytest.mark.parametrize("supervision", ["single", "deep", "lomix"])
def test_unet_losses_backward(supervision):
    deep = supervision != "single"
    model = build_model("unet", 2, 1, 4, deep_supervision=deep).train()
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
    if "lgmsnet" not in available_models():
        pytest.fail("segfuse.models does not register 'lgmsnet'")
    with force_backend("reference"):
        model = build_model("lgmsnet", 2, 1, 3, deep_supervision=True).train()
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
        build_model("no_such_model", 2, 1, 2)
