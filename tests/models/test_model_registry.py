"""Registry API, what every registered model states (``size_multiple``, its home in segfuse.models), the
plain U-Net baseline, and the logits-to-input-grid helper."""
import pytest
import torch
import torch.nn.functional as F

from segfuse.models import UNet, create_model, list_models, register_model, resize_logits
from segfuse.models.registry import _MODELS


def test_list_models():
    assert {"lgmsnet", "emcad_pvt_v2_b2", "fias", "maskmed", "unet"} <= set(list_models())
    assert list_models() == sorted(list_models())


def _build(name):
    """The registered model with its default options (< 1 s each on CPU; timm's import for EMCAD is the
    slowest), 2D where the model supports it, else 3D."""
    try:
        return create_model(name, 2, 1, 3, deep_supervision=True)
    except ValueError:
        return create_model(name, 3, 1, 3, deep_supervision=True)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_states_its_size_multiple_and_lives_in_models(name):
    assert _MODELS[name].__module__.startswith("segfuse.models."), _MODELS[name].__module__
    model = _build(name)
    assert type(model).__module__.startswith("segfuse.models."), type(model).__module__
    m = getattr(model, "size_multiple", None)
    assert isinstance(m, int) and m >= 1 and (m & (m - 1)) == 0, f"{name}: size_multiple={m!r}"
    assert not hasattr(model, "divisor")


def test_unet_is_registered_with_its_constructor_options():
    net = create_model("unet", 2, 1, 3, deep_supervision=True, channels=(8, 16, 32, 64))
    assert isinstance(net, UNet) and net.size_multiple == 8 and net.output_strides == [4, 2, 1]
    outs = net.train()(torch.randn(1, 1, 16, 24))
    assert [tuple(o.shape) for o in outs] == [(1, 3, 4, 6), (1, 3, 8, 12), (1, 3, 16, 24)]
    assert create_model("unet", 3, 2, 4).eval()(torch.randn(1, 2, 8, 8, 4)).shape == (1, 4, 8, 8, 4)


def test_create_model_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        create_model("vnet", 2, 1, 2)
    with pytest.raises(TypeError, match="name must be a str"):
        create_model(None, 2, 1, 2)
    with pytest.raises(ValueError, match="already registered"):
        register_model("lgmsnet")(lambda *a, **k: None)


def test_resize_logits_equals_interpolate_on_multiples():
    maps = [torch.randn(1, 2, 2, 3), torch.randn(1, 2, 8, 12)]
    out = resize_logits(maps, (32, 48), (16, 4))
    for m, o in zip(maps, out):
        torch.testing.assert_close(o, F.interpolate(m, size=(32, 48), mode="bilinear", align_corners=False))


def test_resize_logits_crops_odd_sizes_3d():
    out = resize_logits([torch.randn(1, 1, 3, 3, 3)], (18, 20, 22), (8,))
    assert out[0].shape == (1, 1, 18, 20, 22)
    with pytest.raises(ValueError, match="2 logit maps but 1 strides"):
        resize_logits([torch.randn(1, 1, 2, 2)] * 2, (8, 8), (4,))
