"""Where a step peaks and what it holds there: at the loss (materialised logits, kept layers) or in
the layers' backward (a recompute's working set), counted against the records that show it."""

from dataclasses import replace

import pytest

from harness.memory.activations import (
    LOGIT_BYTES,
    activation_bytes,
    activation_peaks,
    layer_bytes,
    logits_bytes,
)
from harness.memory.allocator import slack_terms
from harness.memory.model import (
    LLAMA3_8B,
    PRIOR_ANCHORS,
    Setting,
    predict_peak_gib,
    prior_calibration,
)
from harness.memory.records import describes, repo_records, setting_from_record, shape_from_record
from harness.memory.terms import GIB

QLORA = Setting(batch_size=4)  # the anchor recipe: nf4+dq, r16 all-linear, seq 2048, full ckpt


def _loops() -> list[dict]:
    return [r for r in repo_records() if r.get("runner") == "loop" and r["status"] == "success"]


def test_materialised_logits_put_the_peak_at_the_loss() -> None:
    """HF's loss on full logits holds 12 B a logit in its backward, above a layer's recompute:
    the peak is at the loss, with what the forward saved (layer inputs) and no working set.
    Through a chunked head the logits are ~0 and the peak is the recompute's."""
    tokens = 4 * 2048
    boundary = 2.0 * LLAMA3_8B.hidden_size * tokens * LLAMA3_8B.num_layers
    assert logits_bytes(LLAMA3_8B, QLORA) == LOGIT_BYTES * tokens * LLAMA3_8B.vocab_size
    assert activation_bytes(LLAMA3_8B, QLORA) == boundary
    chunked = replace(QLORA, chunked_loss=True)
    assert logits_bytes(LLAMA3_8B, chunked) == 0.0
    at_loss, backward = activation_peaks(LLAMA3_8B, chunked)
    assert at_loss == boundary < backward == activation_bytes(LLAMA3_8B, chunked)
    assert slack_terms(LLAMA3_8B, QLORA)["loss_blocks"] == pytest.approx(
        2.0 * tokens * LLAMA3_8B.vocab_size / GIB
    )  # the forward's bf16 logits, freed and cached
    assert slack_terms(LLAMA3_8B, chunked)["loss_blocks"] == 0.0
    none = replace(QLORA, checkpointing="none")  # no recompute: saved everything, at the loss
    assert logits_bytes(LLAMA3_8B, none) > 0 and len(set(activation_peaks(LLAMA3_8B, none))) == 1


def test_the_reference_loop_is_read_as_what_it_runs() -> None:
    """runner: loop records carry the trial's engine block, but the loop runs none of it: bf16
    frozen weights, full recompute, peft's layers, HF's loss on full logits. Its llama3-8b b1
    setting is the probe's plain row (9.04 GiB allocated in both)."""
    loops = _loops()
    assert loops and all(describes(r) for r in loops)
    for rec in loops:
        s = setting_from_record(rec)
        assert not s.upcast_frozen and not s.chunked_loss, rec["_label"]
        assert (s.checkpointing, s.kernels, s.lora_kernel) == ("full", "none", "peft")
        assert s.host_layers == 0 and not s.head_on_cpu and s.memory_cap_gib is None
    b1 = next(r for r in loops if r["_label"].endswith("llama3-8b_b1_loop"))
    probe = next(a for a in PRIOR_ANCHORS if a[3] == "probe: H100 llama3-8b batch_size=1")
    loop_pred = predict_peak_gib(shape_from_record(b1["model"]), setting_from_record(b1))
    assert loop_pred["total"] == pytest.approx(predict_peak_gib(probe[0], probe[1])["total"])


def test_the_loops_allocated_peak_is_counted_not_fitted() -> None:
    """Allocated (tensors) within 3% of every loop record: weights, layer inputs and 12 B a
    logit (llama3-8b b4: 19.44 GiB measured; qwen2.5-1.5b b4, 152k vocab: 15.83)."""
    for rec in _loops():
        out = predict_peak_gib(shape_from_record(rec["model"]), setting_from_record(rec))
        assert out["tensors_gib"] == pytest.approx(rec["peak_vram_allocated_gib"], rel=0.03)
    assert prior_calibration().logits_factor == pytest.approx(1.0, abs=0.1)


def test_unsloth_records_are_read_as_unsloth_runs_them() -> None:
    """Left out of the fit and the score (a peer, never picked), but read as what it runs."""
    unsloth = [r for r in repo_records() if (r.get("levers") or {}).get("backend") == "unsloth"]
    assert unsloth
    for rec in unsloth:
        s = setting_from_record(rec)
        assert not s.upcast_frozen and s.chunked_loss and s.lora_kernel == "fused"
        assert (s.checkpointing, s.checkpoint_fraction) == ("offload", 1.0) and s.fused_masks
    dropout = replace(QLORA, lora_kernel="fused", fused_masks=True)
    masks = (
        layer_bytes(LLAMA3_8B, dropout)[0] - layer_bytes(LLAMA3_8B, replace(dropout, dropout=0))[0]
    )
    h, i = LLAMA3_8B.hidden_size, LLAMA3_8B.intermediate_size
    assert masks == 6 * h + i  # 1 B a mask: q, k, v, o, gate, up read h wide, down i wide


def test_causal_padding_drops_the_mask_term_where_layers_are_kept() -> None:
    """train.causal_padding: about one dense [batch, heads, seq, seq] bf16 tensor less at the peak
    of settings that keep layers (measured -0.89 to -1.29 GiB on llama3-8b b4), where it sits at
    the loss; none under full recompute, whose peak never held it (lean: 5.40 vs 5.38 GiB
    allocated)."""
    term = 2.0 * 4 * LLAMA3_8B.num_heads * 2048**2 / GIB
    for mode, saved in (("selective", term), ("none", term), ("full", 0.0), ("offload", 0.0)):
        base = replace(QLORA, checkpointing=mode, batch_size=4, seq_len=2048, kept_layers="top")
        masked = predict_peak_gib(LLAMA3_8B, base)["total"]
        unmasked = predict_peak_gib(LLAMA3_8B, replace(base, causal_padding=True))["total"]
        assert masked - unmasked == pytest.approx(saved * prior_calibration().act_factor), mode


def test_kept_layers_at_the_top_peak_at_the_larger_side_not_the_sum() -> None:
    """Two candidate peaks: at the loss (every kept layer) and recomputing the top recomputed layer
    (its working set and the kept layers below it: all but the top one where they are spread,
    none with train.kept_layers=top). A working set is a layer's activations and its dequantized
    weights, so spread full kept layers peak in backward by those weights (0.41 GiB: the H200
    measured 13.86 GiB allocated spread and top, 6 kept: the loss side holds the chunked loss's
    buffers, which the count leaves to the fitted overhead). Slim kept layers hold less than a
    working set: spread peaks in backward, top at the loss."""
    fast = replace(QLORA, checkpointing="selective", checkpoint_fraction=0.8125, batch_size=4,
                   seq_len=2048, lora_kernel="fused", kernels="liger")  # fmt: skip
    act = {p: activation_bytes(LLAMA3_8B, replace(fast, kept_layers=p)) for p in ("spread", "top")}
    dequant = 2.0 * LLAMA3_8B.linear_params / 32
    assert act["spread"] - act["top"] == pytest.approx(dequant)
    slim = replace(fast, slim_activations=True)
    slim_act = {p: activation_bytes(LLAMA3_8B, replace(slim, kept_layers=p)) for p in act}
    tokens = 4 * 2048
    one_layer, one_slim, _ = (b * tokens for b in layer_bytes(LLAMA3_8B, slim))
    assert slim_act["spread"] - slim_act["top"] == pytest.approx(
        one_layer - one_slim + dequant, rel=1e-6
    )
    # lean with one kept layer: the working set is the larger side, the kept layer comes free
    lean = replace(fast, checkpointing="offload", checkpoint_fraction=None, causal_padding=True)
    lean_k1 = replace(lean, checkpoint_fraction=31 / 32, kept_layers="top")
    assert activation_bytes(LLAMA3_8B, lean_k1) == pytest.approx(activation_bytes(LLAMA3_8B, lean))
    # a streamed head sits on the kept side's peak (the loss) with top placement only
    k4 = replace(lean, checkpoint_fraction=28 / 32, head_on_cpu=True)
    head = 2.0 * LLAMA3_8B.vocab_size * LLAMA3_8B.hidden_size
    assert activation_bytes(LLAMA3_8B, replace(k4, kept_layers="top")) == pytest.approx(
        activation_bytes(LLAMA3_8B, replace(k4, head_on_cpu=False, kept_layers="top")) + head
    )
    for mode in ("full", "none"):  # nothing kept, or nothing recomputed: placement is moot
        s = replace(fast, checkpointing=mode)
        assert activation_bytes(LLAMA3_8B, s) == activation_bytes(
            LLAMA3_8B, replace(s, kept_layers="top")
        )


def test_host_layers_add_one_fetched_layer_to_the_backward_side_only() -> None:
    """engine.host_layers: the host layers' saved tensors live in host memory; one at a time comes
    back beside the recompute working set. The fast preset peaks at the loss (6 full kept
    layers): host layers leave its peak; lean with every layer off the GPU peaks in backward: one
    layer more. The blocks their parking copies still read are the allocator's (reserved, not
    allocated), which a cap takes. A record reads back with the layers its levers took off."""
    from harness.memory.model import setting_from_record

    fast = replace(QLORA, checkpointing="selective", checkpoint_fraction=0.8125, batch_size=4,
                   lora_kernel="fused", kernels="liger", kept_layers="top", chunked_loss=True,
                   causal_padding=True)  # fmt: skip
    one_layer = layer_bytes(LLAMA3_8B, fast)[0] * 4 * 2048
    boundary = 2.0 * LLAMA3_8B.hidden_size * 4 * 2048
    fast_host = activation_bytes(LLAMA3_8B, replace(fast, host_layers=6))
    assert fast_host == pytest.approx(activation_bytes(LLAMA3_8B, fast) - 6 * boundary)
    lean = replace(fast, checkpointing="offload", checkpoint_fraction=None)
    assert activation_bytes(LLAMA3_8B, replace(lean, host_layers=6)) == pytest.approx(
        activation_bytes(LLAMA3_8B, lean) + one_layer
    )
    assert slack_terms(LLAMA3_8B, replace(fast, host_layers=6))["host_copies"] == pytest.approx(
        6 * one_layer / GIB
    )
    free = predict_peak_gib(LLAMA3_8B, replace(fast, host_layers=6))
    assert free["total"] - free["tensors_gib"] > 6 * 0.3 * one_layer / GIB  # 2.3-3.3 GiB on H200
    capped = predict_peak_gib(LLAMA3_8B, replace(fast, host_layers=6, memory_cap_gib=14.2))
    assert capped["total"] == 14.2 and not capped["exceeds_cap"]
    rec = {"config": {"train": {"checkpointing": "offload", "checkpoint_fraction": 0.875,
                                "host_layers": 6}, "quant": {"type": "nf4"}},
           "levers": {"checkpointed_layers": 22, "host_layers": 6, "num_layers": 32}}  # fmt: skip
    s = setting_from_record(rec)
    assert (s.checkpoint_fraction, s.host_layers) == (28 / 32, 6)
    from harness.analysis.pin import experiment_yaml  # a pinned rerun: the same 28 off the GPU

    pinned = experiment_yaml(rec, name="x", command="pick")
    assert "checkpoint_fraction: 0.875" in pinned and "host_layers: 6" in pinned
