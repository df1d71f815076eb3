"""engine.trim_recompute: a recomputed layer skips down_proj's frozen matmul and nothing else. The
loss and every gradient are the untrimmed run's bit for bit, and the skipped matmuls really are
skipped (one base weight fewer per recomputed layer). Its speed is measured by the benchmark
(BENCHMARKS.md), never asserted here."""

import pytest
import torch
from conftest import requires_cuda
from engine_models import assert_same_bits, built, step, tiny_peft

from harness.engine import lora_op
from harness.engine.layers import decoder_layers
from harness.engine.trim import Recompute


def _counting_base_weight(monkeypatch) -> dict:
    """Count lora_op.base_weight calls per layer kind (the frozen weight each matmul reads)."""
    calls: dict[str, int] = {}
    original = lora_op.base_weight

    def counted(layer, dtype, dequant=None):
        kind = "down" if layer.out_features == 64 and layer.in_features != 64 else "other"
        calls[kind] = calls.get(kind, 0) + 1
        return original(layer, dtype, dequant)

    monkeypatch.setattr(lora_op, "base_weight", counted)
    return calls


def _downs(model) -> list:
    return [layer.mlp.down_proj for layer in decoder_layers(model)]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_trimmed_recompute_keeps_loss_and_gradients_bit_for_bit(mode, monkeypatch):
    """4 layers (selective: 2 recomputed), dropout on: the same loss and gradients with and
    without the trim, and each recomputed layer reads down_proj's base weight once less."""
    ids = torch.randint(0, 1000, (2, 16))
    recomputed = {"full": 4, "selective": 2}[mode]
    common = dict(lora_kernel="fused", checkpointing=mode, checkpoint_fraction=0.5)
    calls = _counting_base_weight(monkeypatch)
    model, levers = built(0.2, layers=4, **common)
    assert levers["checkpointed_layers"] == recomputed and levers["recompute_trimmed"] == 0
    ref = step(model, ids)
    untrimmed = dict(calls)
    calls.clear()
    model, levers = built(0.2, layers=4, trim_recompute=True, **common)
    assert levers["recompute_trimmed"] == recomputed
    assert_same_bits(step(model, ids), ref)
    # forward + backward read every base weight once each (+ once per recompute, untrimmed)
    assert untrimmed["down"] == 2 * 4 + recomputed
    assert calls["down"] == 2 * 4
    assert calls["other"] == untrimmed["other"]
    flags = {id(d.recompute): d.recompute for d in _downs(model) if d.recompute is not None}
    assert len(flags) == 1  # one Recompute flag for the model
    assert [f.depth for f in flags.values()] == [0]  # no recompute left marked


def test_trim_marks_only_the_recomputed_layers_down_proj():
    ckpt = dict(checkpointing="selective", checkpoint_fraction=0.5, kept_layers="top")
    model, levers = built(layers=4, lora_kernel="fused", trim_recompute=True, **ckpt)
    downs = _downs(model)
    assert [d.trim for d in downs] == [True, True, False, False]
    assert levers["recompute_trimmed"] == 2
    assert all(isinstance(d.recompute, Recompute) for d in downs[:2])
    assert all(d.recompute is None for d in downs[2:])


def test_a_trimmed_projection_runs_in_full_outside_a_recompute():
    """Only a recompute skips: the first forward, eval and a layer that is not recomputed compute
    down_proj's output."""
    ids = torch.randint(0, 1000, (1, 8))
    ref = tiny_peft()(input_ids=ids).logits.detach()
    model, _ = built(lora_kernel="fused", checkpointing="full", trim_recompute=True)
    torch.testing.assert_close(model(input_ids=ids).logits, ref)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref)


@requires_cuda
@pytest.mark.gpu
def test_trimmed_offloaded_recompute_keeps_loss_and_gradients_on_cuda(monkeypatch):
    """Offloaded recompute (backpropagated from its own, unread output) under bf16 autocast with
    dropout: the untrimmed loss and gradients bit for bit, and down_proj read once less a layer."""
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    calls = _counting_base_weight(monkeypatch)
    results = {}
    for on in (False, True):
        calls.clear()
        model, levers = built(0.2, tied=False, lora_kernel="fused", checkpointing="offload",
                              trim_recompute=on)  # fmt: skip
        model.cuda()
        assert levers["recompute_trimmed"] == (2 if on else 0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[on] = (step(model, ids), dict(calls))
    assert_same_bits(results[True][0], results[False][0])
    assert results[False][1]["down"] == 2 * 2 + 2 and results[True][1]["down"] == 2 * 2


def test_mfu_counts_the_trimmed_matmuls_out_of_the_recompute():
    from harness.assets.shapes import shape_config
    from harness.trial.flops import utilization

    hf_config = shape_config("tiny-llama")
    kw = dict(seq_len=16, lora_params=1000, recompute_fraction=1.0)
    full = utilization(hf_config, 100.0, **kw)
    down = hf_config.hidden_size * hf_config.intermediate_size
    layers = hf_config.num_hidden_layers
    trimmed = utilization(hf_config, 100.0, recompute_trimmed_layers=layers, **kw)
    skipped = full["recompute_flops_per_token"] - trimmed["recompute_flops_per_token"]
    assert skipped == 2 * layers * down
    assert trimmed["mfu"] == full["mfu"] and trimmed["hfu"] < full["hfu"]
