"""train.flat_optimizer folds the adapter tensors into one update per param group: the same
parameters after every step as the per-tensor optimizer, bit for bit, for bitsandbytes' 8-bit
AdamW (blocks of 256 align with tensor boundaries) and torch's AdamW; tensors whose update would
change stay per-tensor."""

import pytest
import torch

from harness.engine.flat_optim import flatten_optimizer

SHAPES = [(16, 256), (512, 16), (16, 64), (7, 9), (300,)]  # the last two cannot fold in 8-bit


def _twins(make, **kw):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    return a, b, make(a, **kw), make(b, **kw)


def _optimizers():
    import bitsandbytes as bnb

    return {
        "adamw_8bit": (bnb.optim.AdamW8bit,
                       {"lr": 1e-2, "weight_decay": 0.01, "min_8bit_size": 1024}),
        "adamw_torch": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.01}),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["adamw_8bit", "adamw_torch"])
def test_flat_optimizer_steps_exactly_like_per_tensor(name):
    make, kw = _optimizers()[name]
    a, b, opt_a, opt_b = _twins(make, **kw)
    folded = flatten_optimizer(opt_b)
    assert folded == (3 if name == "adamw_8bit" else 5)
    for _ in range(5):
        grads = [torch.randn(s) for s in SHAPES]
        for x, y, g in zip(a, b, grads, strict=True):
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert all(y.grad is not None for y in b)  # the model's grads are untouched


def test_flat_optimizer_keeps_a_missing_grad_as_zero_and_refuses_a_used_optimizer():
    make, kw = _optimizers()["adamw_torch"]
    a, b, opt_a, opt_b = _twins(make, **kw)
    flatten_optimizer(opt_b)
    for x, y in zip(a[1:], b[1:], strict=True):  # the first tensor gets no gradient
        x.grad, y.grad = torch.ones_like(x), torch.ones_like(y)
    a[0].grad = torch.zeros_like(a[0])  # torch skips None grads; the flat step sees zeros
    opt_a.step()
    opt_b.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(RuntimeError, match="already has state"):
        flatten_optimizer(opt_b)
