"""Models and the three supervision modes give finite losses and gradients (eager path)."""
import pytest
import torch

from segfuse.kernels import force_backend
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
    if supervision == "lomix":
        w = loss_weights(mod)
        assert w and abs(sum(w.values()) - 1.0) < 1e-5 or all(v > 0 for v in w.values())


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
