"""LoMixLoss: module parity (fused vs eager reference) for every parameter, weight modes, naming, and a
short CPU training run where the fused and eager losses agree step by step and the loss falls."""
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from segfuse.kernels import force_backend
from segfuse.losses import LoMixLoss
from segfuse.testing import assert_verbose_allclose


def _grads(loss_fn, maps, y, backend):
    maps = [m.detach().clone().requires_grad_() for m in maps]
    loss_fn.zero_grad(set_to_none=True)
    with force_backend(backend):
        loss = loss_fn(maps, y)
    loss.backward()
    return loss.detach(), [m.grad for m in maps], {n: p.grad.clone() for n, p in loss_fn.named_parameters()}


@pytest.mark.parametrize("weight_mode,num_maps", [("free", 3), ("normalized", 2)])
def test_module_parity_all_parameters(weight_mode, num_maps):
    torch.manual_seed(1)
    loss_fn = LoMixLoss(num_maps, 3, 2, weight_mode=weight_mode)
    with torch.no_grad():
        loss_fn.raw_weights.normal_(0, 0.5)
    maps = [torch.randn(2, 3, 2, 3), torch.randn(2, 3, 4, 6), torch.randn(2, 3, 8, 12)][-num_maps:]  # coarse -> fine
    y = torch.randint(0, 3, (2, 8, 12))
    lt, gmt, gpt = _grads(loss_fn, maps, y, "triton")
    lr, gmr, gpr = _grads(loss_fn, maps, y, "reference")
    assert_verbose_allclose(lt, lr, atol=1e-5, rtol=1e-5, name="loss")
    for i, (a, b) in enumerate(zip(gmt, gmr)):
        assert_verbose_allclose(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4, name=f"grad logits[{i}]")
    assert set(gpt) == {"raw_weights", "concat_weight", "concat_bias", "attn_weight", "attn_bias"}
    for n in gpt:
        assert_verbose_allclose(gpt[n], gpr[n], atol=1e-5 * gpr[n].abs().max().item(), rtol=1e-4, name=f"grad {n}")


def test_interpret_names_and_init():
    loss_fn = LoMixLoss(4, 9, 2)
    w = loss_fn.interpret()
    assert len(w) == 48
    assert list(w)[:5] == ["p0", "p1", "p2", "p3", "add(p0,p1)"]
    assert "attention(p0,p1,p2,p3)" in w and "concat(p1,p3)" in w and "mul(p0,p2,p3)" in w
    assert all(abs(v - math.log(2.0)) < 1e-6 for v in w.values())
    assert loss_fn.concat_weight.shape == (28, 9, 9) and loss_fn.attn_weight.shape == (9, 9)


def test_free_weights_drift_down_under_adam_normalized_do_not():
    """The published objective has no lower bound in the weights: dL/d raw = sigmoid(raw) * loss_t > 0, so
    Adam lowers every raw weight by ~lr per step. The normalised mode keeps the sum fixed at T ln 2."""
    torch.manual_seed(0)
    maps = [torch.randn(1, 3, 6, 7) for _ in range(2)]
    y = torch.randint(0, 3, (1, 6, 7))
    results = {}
    for mode in ("free", "normalized"):
        loss_fn = LoMixLoss(2, 3, 2, operators=("add", "mul"), weight_mode=mode)
        opt = torch.optim.Adam(loss_fn.parameters(), lr=0.1)
        with force_backend("triton"):
            for _ in range(3):
                opt.zero_grad()
                loss_fn(maps, y).backward()
                opt.step()
        results[mode] = (loss_fn.raw_weights.detach().clone(), loss_fn.weights())
    raw, free = results["free"]
    assert (raw < -0.25).all(), raw  # ~ -lr per Adam step, every weight, whatever its gradient's size
    assert (free < math.log(2.0)).all()
    norm = results["normalized"][1]
    assert abs(norm.sum().item() - 4 * math.log(2.0)) < 1e-5


def test_concat_random_reproduces_released_behaviour():
    loss_fn = LoMixLoss(2, 3, 2, operators=("concat",), concat="random")
    assert loss_fn.concat_weight is None and [n for n, _ in loss_fn.named_parameters()] == ["raw_weights"]
    maps = [torch.randn(1, 3, 5, 6, requires_grad=True) for _ in range(2)]
    y = torch.randint(0, 3, (1, 5, 6))
    with force_backend("triton"):
        a, b = loss_fn(maps, y), loss_fn(maps, y)
        b.backward()
    assert a.item() != b.item()  # a fresh random projection every call
    assert maps[0].grad is not None


def test_errors():
    with pytest.raises(ValueError, match="operators must be one of"):
        LoMixLoss(4, 9, 2, operators=("add", "concatenate"))
    with pytest.raises(ValueError, match="weight_mode must be one of"):
        LoMixLoss(4, 9, 2, weight_mode="softplus")
    loss_fn = LoMixLoss(3, 3, 2, operators=("add",))
    with pytest.raises(ValueError, match="num_maps=3"):
        loss_fn([torch.randn(1, 3, 4, 4)] * 2, torch.zeros(1, 4, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- training
class TinyUNet(nn.Module):
    """Two-level U-shaped net returning logits at 1/2 and full resolution (coarse -> fine)."""

    def __init__(self, c_in=1, n_cls=3, w=6):
        super().__init__()
        self.e1 = nn.Conv2d(c_in, w, 3, padding=1)
        self.e2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.e3 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.d2 = nn.Conv2d(4 * w, w, 3, padding=1)
        self.d1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.h3, self.h2, self.h1 = nn.Conv2d(2 * w, n_cls, 1), nn.Conv2d(w, n_cls, 1), nn.Conv2d(w, n_cls, 1)

    def forward(self, x):
        f1 = F.relu(self.e1(x))
        f2 = F.relu(self.e2(f1))
        f3 = F.relu(self.e3(f2))
        u2 = F.relu(self.d2(torch.cat([F.interpolate(f3, scale_factor=2.0), f2], 1)))
        u1 = F.relu(self.d1(torch.cat([F.interpolate(u2, scale_factor=2.0), f1], 1)))
        return [self.h2(u2), self.h1(u1)]


def _train(backend, steps=5):
    torch.manual_seed(0)
    net = TinyUNet()
    loss_fn = LoMixLoss(2, 3, 2, operators=("mul", "attention"))
    opt = torch.optim.AdamW(list(net.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 8, 8, generator=g)
    y = (x[:, 0] > 0.35).long() + (x[:, 0] > 0.7).long()  # intensity -> 3 classes
    losses = []
    with force_backend(backend):
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_short_training_fused_matches_eager_and_loss_falls():
    fused = _train("triton")
    eager = _train("reference")
    for step, (a, b) in enumerate(zip(fused, eager)):
        assert abs(a - b) <= 1e-4 * abs(b) + 1e-5, f"step {step}: fused {a} vs eager {b}"
    assert fused[-1] < fused[0]
