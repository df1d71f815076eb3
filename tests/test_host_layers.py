"""engine.host_layers: layers whose saved tensors make a round trip through host memory train as if
they had kept them (same loss, same gradients). The mechanism (saved-tensor hooks, one copy per
tensor however many ops save it, the layout kept, fetches started from the layers above) runs on
the CPU here with every saved tensor moved; the pinned copies and side streams on CUDA."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import assert_close, built, offloader, runner, step

from harness.config.engine import EngineConfig
from harness.engine import build as engine
from harness.engine import host_layers, layer_plan
from harness.engine.layers import Checkpoint, decoder_layers
from harness.engine.offload import Offloader
from harness.errors import ConfigError


@pytest.fixture
def every_tensor(monkeypatch):
    monkeypatch.setattr(host_layers, "MIN_BYTES", 0)  # the tiny model's tensors are all small


def test_host_positions_spread_over_the_layers_to_recompute_and_are_checked_early():
    def plan(**levers):
        return layer_plan.host_positions(32, EngineConfig(checkpointing="offload", **levers))

    recomputed, host = plan(checkpoint_fraction=0.875, kept_layers="top", host_layers=4)
    assert host == {3, 10, 17, 24} and recomputed == set(range(28)) - host
    recomputed, host = plan(host_layers=0)
    assert host == set() and recomputed == set(range(32))
    with pytest.raises(ConfigError, match=r"engine.host_layers.*29.*at most the 28 of 32"):
        plan(checkpoint_fraction=0.875, host_layers=29)
    with pytest.raises(ConfigError, match="engine.host_layers.*29"):  # preflight: before any load
        engine.check(EngineConfig(checkpointing="offload", checkpoint_fraction=0.875,
                                  host_layers=29), "cuda", num_layers=32)  # fmt: skip
    with pytest.raises(ConfigError, match="engine.host_layers.*2.*selective or offload"):
        EngineConfig(checkpointing="full", host_layers=2)
    with pytest.raises(ConfigError, match="engine.host_layers.*-1"):
        EngineConfig(checkpointing="offload", host_layers=-1)
    with pytest.raises(ConfigError, match="engine.host_layers.*needs CUDA"):
        engine.check(EngineConfig(checkpointing="selective", host_layers=1), "cpu")


@pytest.mark.parametrize("fused", [False, True])
def test_host_layers_keep_loss_and_gradients_and_move_what_forward_saves(every_tensor, fused):
    """4 layers, 3 off the GPU (spread: 0, 1, 2), 2 of them host layers (0 and 2), dropout on."""
    ids = torch.randint(0, 1000, (2, 16))
    kernel = {"lora_kernel": "fused"} if fused else {}
    ref = step(built(0.1, layers=4, checkpointing="full", **kernel)[0], ids)
    model, levers = built(0.1, layers=4, checkpointing="selective", checkpoint_fraction=0.75,
                          host_layers=2, **kernel)  # fmt: skip
    layers = decoder_layers(model)
    hows = [getattr(runner(m), "how", None) for m in layers]
    assert levers["host_layers"] == 2 and levers["checkpointed_layers"] == 1
    assert [isinstance(h, host_layers.HostRun) for h in hows] == [True, False, True, False]
    assert [isinstance(h, Checkpoint) for h in hows] == [False, True, False, False]
    parking = offloader(model)
    assert isinstance(parking, Offloader) and all(h.offloader is parking for h in hows[::2])

    torch.manual_seed(3)
    out = model(input_ids=ids, labels=ids)
    parked = dict(parking.parked)
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
    assert parking.parked == {}  # every group was fetched, from the layers above
    assert all(g.host == [] and g.gpu is not None for g in parked.values())
    model.zero_grad(set_to_none=True)
    assert_close(step(model, ids), ref)


def test_a_parked_tensor_comes_back_in_its_own_layout(every_tensor):
    group = host_layers._Group(Offloader(), torch.device("cpu"), set())
    base = torch.randn(2, 5, 3, 4)
    t = base.transpose(1, 2)  # [2, 3, 5, 4], not contiguous
    packet = group.pack(t)
    assert group.pack(t) is packet  # saved twice, copied once
    group.seen.clear()
    back = group.unpack(packet)
    assert back.stride() == t.stride() and torch.equal(back, t)
    assert back.data_ptr() != t.data_ptr()


def test_no_grad_forward_parks_nothing_and_an_aborted_pass_is_the_trials_own(every_tensor):
    """What an aborted pass (an OOM step) parked stays with the model's Offloader; the next trial
    builds its own and starts empty."""
    ids = torch.randint(0, 1000, (2, 16))
    levers = {"checkpointing": "selective", "checkpoint_fraction": 0.75, "host_layers": 1}
    model, _ = built(**levers)
    parking = offloader(model)
    with torch.no_grad():
        model(input_ids=ids)
    assert parking.parked == {}
    model(input_ids=ids)  # a forward whose backward never runs
    assert list(parking.parked) == [1]
    other, _ = built(**levers)
    assert offloader(other) is not parking and offloader(other).parked == {}


@requires_cuda
@pytest.mark.gpu
def test_host_layers_keep_loss_and_gradients_on_cuda(every_tensor):
    """Pinned copies on the side streams, with offloaded recompute and the fused op's dropout."""
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    ref = step(built(0.2, tied=False, layers=6, lora_kernel="fused",
                     checkpointing="full")[0].cuda(), ids)  # fmt: skip
    for mode in ("selective", "offload"):
        levers = dict(checkpointing=mode, checkpoint_fraction=0.84, kept_layers="top")
        model, levers = built(
            0.2, tied=False, layers=6, lora_kernel="fused", host_layers=2, **levers
        )
        model.cuda()
        assert levers["host_layers"] == 2 and levers["checkpointed_layers"] == 3
        for _ in range(2):  # the second step reuses the pinned buffers
            assert_close(step(model, ids), ref)
        assert offloader(model).parked == {}
