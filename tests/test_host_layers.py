"""train.host_layers: layers whose saved tensors make a round trip through host memory train as if
they had kept them (same loss, same gradients). The mechanism (saved-tensor hooks, one copy per
tensor however many ops save it, the layout kept, fetches started from the layers above) runs on
the CPU here with every saved tensor moved; the pinned copies and side streams on CUDA."""

import pytest
import torch
from conftest import requires_cuda
from test_levers import _apply, _loss_and_grads, _tiny_peft

from harness.config.schema import TrainConfig
from harness.engine import build as levers
from harness.engine import host_layers, layer_plan
from harness.errors import ConfigError


@pytest.fixture
def every_tensor(monkeypatch):
    monkeypatch.setattr(host_layers, "MIN_BYTES", 0)  # the tiny model's tensors are all small


def _checkpointed(layers: int = 4, dropout: float = 0.0, tied: bool = True):
    model = _tiny_peft(layers=layers, dropout=dropout, tied=tied)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return model


def test_host_positions_spread_over_the_layers_to_recompute_and_are_checked_early():
    def plan(**train):
        return layer_plan.host_positions(32, TrainConfig(checkpointing="offload", **train))

    recomputed, host = plan(checkpoint_fraction=0.875, kept_layers="top", host_layers=4)
    assert host == {3, 10, 17, 24} and recomputed == set(range(28)) - host
    recomputed, host = plan(host_layers=0)
    assert host == set() and recomputed == set(range(32))
    with pytest.raises(ConfigError, match=r"train.host_layers.*29.*at most the 28 of 32"):
        plan(checkpoint_fraction=0.875, host_layers=29)
    with pytest.raises(ConfigError, match="train.host_layers.*29"):  # preflight: before any load
        levers.check(TrainConfig(checkpointing="offload", checkpoint_fraction=0.875,
                                 host_layers=29), "cuda", num_layers=32)  # fmt: skip
    with pytest.raises(ConfigError, match="train.host_layers.*2.*selective or offload"):
        TrainConfig(checkpointing="full", host_layers=2)
    with pytest.raises(ConfigError, match="train.host_layers.*-1"):
        TrainConfig(checkpointing="offload", host_layers=-1)
    with pytest.raises(ConfigError, match="train.host_layers.*needs CUDA"):
        levers.check(TrainConfig(checkpointing="selective", host_layers=1), "cpu")


@pytest.mark.parametrize("fused", [False, True])
def test_host_layers_keep_loss_and_gradients_and_move_what_forward_saves(every_tensor, fused):
    """4 layers, 3 off the GPU (spread: 0, 1, 2), 2 of them host layers (0 and 2), dropout on."""
    model = _checkpointed(dropout=0.1)
    ids = torch.randint(0, 1000, (2, 16))
    kernel = {"lora_kernel": "fused"} if fused else {}
    _apply(model, checkpointing="full", **kernel)
    torch.manual_seed(3)
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    applied = _apply(model, checkpointing="selective", checkpoint_fraction=0.75, host_layers=2,
                     **kernel)  # fmt: skip
    layers = levers._decoder_layers(model)
    assert applied["host_layers"] == 2 and applied["checkpointed_layers"] == 1
    assert [host_layers.is_host(m) for m in layers] == [True, False, True, False]
    assert [m.gradient_checkpointing for m in layers] == [False, True, False, False]

    torch.manual_seed(3)
    out = model(input_ids=ids, labels=ids)
    parked = dict(host_layers._PARKED)
    assert sorted(parked) == [0, 2]
    saved = [len(g.host) for g in parked.values()]
    # each layer saves its input once, though two ops (its norm and the residual) may read it:
    # the copies are fewer than the tensors autograd saved (q, k, v share one input)
    assert all(n >= 8 for n in saved)
    if fused:  # the fused op saves its input per projection: one copy for q, k, v (and gate,
        # up): the attention input, the attention output and the MLP input, not 3 + 1 + 2
        keys = [tuple(p.shape) for p in parked[0].host]
        assert keys.count((2 * 16, 64)) == 3
    out.loss.backward()
    assert host_layers._PARKED == {}  # every group was fetched, from the layers above
    assert all(g.host == [] and g.gpu is not None for g in parked.values())
    model.zero_grad(set_to_none=True)

    torch.manual_seed(3)
    loss, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, loss_ref)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad)

    _apply(model, checkpointing="full", **kernel)  # undone on the same instance
    assert not any(host_layers.is_host(m) for m in layers)
    assert all(type(m).__name__ == "LlamaDecoderLayer" and "_harness_host" not in vars(m)
               for m in layers)  # fmt: skip
    torch.manual_seed(3)
    torch.testing.assert_close(_loss_and_grads(model, ids)[0], loss_ref)


def test_a_parked_tensor_comes_back_in_its_own_layout(every_tensor):
    group = host_layers._Group(torch.device("cpu"), set())
    base = torch.randn(2, 5, 3, 4)
    t = base.transpose(1, 2)  # [2, 3, 5, 4], not contiguous
    packet = group.pack(t)
    assert group.pack(t) is packet  # saved twice, copied once
    group.seen.clear()
    back = group.unpack(packet)
    assert back.stride() == t.stride() and torch.equal(back, t)
    assert back.data_ptr() != t.data_ptr()


def test_no_grad_forward_parks_nothing_and_an_aborted_pass_is_forgotten(every_tensor):
    model = _checkpointed()
    ids = torch.randint(0, 1000, (2, 16))
    _apply(model, checkpointing="selective", checkpoint_fraction=0.75, host_layers=1)
    with torch.no_grad():
        model(input_ids=ids)
    assert host_layers._PARKED == {}
    model(input_ids=ids)  # a forward whose backward never runs (an OOM step)
    assert list(host_layers._PARKED) == [1]
    _apply(model, checkpointing="full")  # the next trial's levers drop it
    assert host_layers._PARKED == {}


@requires_cuda
def test_host_layers_keep_loss_and_gradients_on_cuda(every_tensor):
    """Pinned copies on the side streams, with offloaded recompute and the fused op's dropout."""
    model = _checkpointed(layers=6, dropout=0.2, tied=False).cuda()
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    _apply(model, lora_kernel="fused", checkpointing="full")
    torch.manual_seed(3)
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    for mode in ("selective", "offload"):
        applied = _apply(model, lora_kernel="fused", checkpointing=mode, checkpoint_fraction=0.84,
                         kept_layers="top", host_layers=2)  # fmt: skip
        assert applied["host_layers"] == 2 and applied["checkpointed_layers"] == 3
        for _ in range(2):  # the second step reuses the pinned buffers
            torch.manual_seed(3)
            loss, grads = _loss_and_grads(model, ids)
            torch.testing.assert_close(loss, loss_ref)
            for name, grad in grads_ref.items():
                torch.testing.assert_close(grads[name], grad)
        assert host_layers._PARKED == {}
