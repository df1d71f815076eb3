"""train.trim_recompute: a recomputed layer skips down_proj's frozen matmul and nothing else. The
loss and every gradient are the untrimmed run's bit for bit, and the skipped matmuls really are
skipped (one base weight fewer per recomputed layer). Its speed is measured by the benchmark
(BENCHMARKS.md), never asserted here."""

import pytest
import torch
from conftest import loss_and_grads, requires_cuda
from test_levers import _tiny_peft

from harness.config.schema import TrainConfig
from harness.engine import build as levers
from harness.engine import lora_op, trim


def _apply(model, **train):
    return levers.apply(model, TrainConfig(**train), compute_dtype=torch.bfloat16)


def _counting_base_weight(monkeypatch) -> dict:
    """Count lora_op.base_weight calls per layer kind (the frozen weight each matmul reads)."""
    calls: dict[str, int] = {}
    original = lora_op.base_weight

    def counted(layer, dtype):
        kind = "down" if layer.out_features == 64 and layer.in_features != 64 else "other"
        calls[kind] = calls.get(kind, 0) + 1
        return original(layer, dtype)

    monkeypatch.setattr(lora_op, "base_weight", counted)
    return calls


def _step(model, ids, seed=3):
    torch.manual_seed(seed)  # the fused op's dropout seeds come from the CPU generator
    return loss_and_grads(model, ids)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_trimmed_recompute_keeps_loss_and_gradients_bit_for_bit(mode, monkeypatch):
    """4 layers (selective: 2 recomputed), dropout on: the same loss and gradients with and
    without the trim, and each recomputed layer reads down_proj's base weight once less."""
    model = _tiny_peft(dropout=0.2, layers=4)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 1000, (2, 16))
    recomputed = {"full": 4, "selective": 2}[mode]
    common = dict(lora_kernel="fused", checkpointing=mode, checkpoint_fraction=0.5)
    calls = _counting_base_weight(monkeypatch)
    applied = _apply(model, **common)
    assert applied["checkpointed_layers"] == recomputed and applied["recompute_trimmed"] == 0
    loss_ref, grads_ref = _step(model, ids)
    untrimmed = dict(calls)
    calls.clear()
    applied = _apply(model, trim_recompute=True, **common)
    assert applied["recompute_trimmed"] == recomputed
    loss, grads = _step(model, ids)
    assert torch.equal(loss, loss_ref)
    for name, grad in grads_ref.items():
        assert torch.equal(grads[name], grad), name
    # forward + backward read every base weight once each (+ once per recompute, untrimmed)
    assert untrimmed["down"] == 2 * 4 + recomputed
    assert calls["down"] == 2 * 4
    assert calls["other"] == untrimmed["other"]
    assert trim._DEPTH == [0]  # no recompute left marked


def test_trim_is_undone_on_a_reused_base_and_marks_only_recomputed_layers():
    model = _tiny_peft(layers=4)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    applied = _apply(model, lora_kernel="fused", checkpointing="selective",
                     checkpoint_fraction=0.5, kept_layers="top", trim_recompute=True)  # fmt: skip
    layers = levers._decoder_layers(model)
    marked = [bool(vars(layer.mlp.down_proj).get(trim.ATTR)) for layer in layers]
    assert marked == [True, True, False, False] and applied["recompute_trimmed"] == 2
    _apply(model, lora_kernel="fused", checkpointing="selective", checkpoint_fraction=0.5)
    assert not any(trim.ATTR in vars(m) for m in model.modules())


def test_a_trimmed_projection_runs_in_full_outside_a_recompute():
    """Only a recompute skips: the first forward, eval and a layer that is not recomputed compute
    down_proj's output."""
    model = _tiny_peft(layers=2)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 1000, (1, 8))
    ref = model(input_ids=ids).logits.detach()
    _apply(model, lora_kernel="fused", checkpointing="full", trim_recompute=True)
    torch.testing.assert_close(model(input_ids=ids).logits, ref)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref)


@requires_cuda
def test_trimmed_offloaded_recompute_keeps_loss_and_gradients_on_cuda(monkeypatch):
    """Offloaded recompute (backpropagated from its own, unread output) under bf16 autocast with
    dropout: the untrimmed loss and gradients bit for bit, and down_proj read once less a layer."""
    model = _tiny_peft(dropout=0.2, tied=False).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    ids = torch.randint(0, 1000, (2, 32), device="cuda")
    calls = _counting_base_weight(monkeypatch)
    results = {}
    for on in (False, True):
        calls.clear()
        applied = _apply(model, lora_kernel="fused", checkpointing="offload", trim_recompute=on)
        assert applied["recompute_trimmed"] == (2 if on else 0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[on] = (*_step(model, ids), dict(calls))
    assert torch.equal(results[True][0], results[False][0])
    for name, grad in results[False][1].items():
        assert torch.equal(results[True][1][name], grad), name
    assert results[False][2]["down"] == 2 * 2 + 2 and results[True][2]["down"] == 2 * 2


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
