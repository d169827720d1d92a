"""Registry API and the logits-to-input-grid helper."""
import pytest
import torch
import torch.nn.functional as F

from segfuse.models import create_model, list_models, register_model, resize_logits


def test_list_models():
    assert {"lgmsnet", "emcad_pvt_v2_b2"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_create_model_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        create_model("unet", 2, 1, 2)
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
