"""The memory model: first-principles counts, calibration that reproduces its points, and an
honest leave-one-out error over every CUDA record of the repo."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from memory_counts import calibrating_count, scored_count

from harness.analysis.sources import load_records
from harness.memory.allocator import slack_terms
from harness.memory.model import (
    LLAMA3_8B,
    PRIOR_ANCHORS,
    Setting,
    calibrate,
    error_report,
    loo_report,
    measured_points,
    predict_peak_gib,
    prior_calibration,
)
from harness.memory.records import repo_records
from harness.memory.table import seeds_rows
from harness.memory.terms import GIB, lora_param_count, static_bytes

FIXTURES = Path(__file__).parent / "fixtures"
RECORDS = FIXTURES / "records"
QLORA = Setting(batch_size=4)  # the anchor recipe: nf4+dq, r16 all-linear, seq 2048, full ckpt


def test_first_principles_counts_for_llama3_8b() -> None:
    # 32 layers x (q 16.8M + k 4.2M + v 4.2M + o 16.8M + 3 x 58.7M MLP) = 6.98B linear params.
    assert LLAMA3_8B.linear_params == 6_979_321_856
    assert LLAMA3_8B.params_total == 8_029_995_008  # + 2 x 525M embedding/lm_head (norms aside)
    # PEFT prints 41,943,040 trainable params for r=16 all-linear on Llama-3-8B.
    assert lora_param_count(LLAMA3_8B, QLORA) == 41_943_040
    parts = static_bytes(LLAMA3_8B, QLORA)
    assert parts["weights"] == 0.5 * 6_979_321_856 + 2 * 1_050_673_152
    assert parts["quant_constants"] == pytest.approx(6_979_321_856 * 0.127 / 8)
    no_dq = static_bytes(LLAMA3_8B, replace(QLORA, double_quant=False))
    assert no_dq["quant_constants"] / parts["quant_constants"] == pytest.approx(0.5 / 0.127)
    assert parts["grads"] == 0  # LoRA grads appear after the logits peak
    assert parts["optimizer_states"] == 0  # paged: CUDA managed memory, outside torch's figure
    eight_bit = static_bytes(LLAMA3_8B, replace(QLORA, optimizer="adamw_8bit"))
    assert eight_bit["optimizer_states"] == 2 * 41_943_040  # 8-bit AdamW: 2 B/param
    upcast = static_bytes(LLAMA3_8B, replace(QLORA, upcast_frozen=True))
    # fp32 embed + head (+2 B/param each) and autocast's bf16 head copy: +3 x 525M x 2 B
    assert upcast["weights"] - parts["weights"] == 3 * 2 * 525_336_576
    full = static_bytes(
        LLAMA3_8B, Setting(full_finetune=True, quant="none", optimizer="adamw_torch")
    )
    assert sum(full.values()) == 16 * LLAMA3_8B.params_total


def test_breakdown_adds_up() -> None:
    out = predict_peak_gib(LLAMA3_8B, QLORA)
    keys = ("weights", "quant_constants", "lora_params", "grads", "optimizer_states",
            "graph_buffers", "activations", "logits", "overhead")  # fmt: skip
    assert set(out) == {*keys, "total", "tensors_gib", "not_counted"}
    assert out["total"] == pytest.approx(sum(out[k] for k in keys))
    assert out["tensors_gib"] < out["total"]  # the allocator's slack is reserved, not allocated
    assert out["not_counted"] == pytest.approx(41_943_040 * (4 + 2) / GIB)  # grads + paged


@pytest.mark.parametrize(
    ("cheaper", "dearer"),
    [({"batch_size": 1}, {"batch_size": 4}), ({"checkpointing": "full"}, {"checkpointing": "none"}),
     ({"kernels": "liger"}, {"kernels": "none"}), ({"double_quant": True}, {"double_quant": False}),
     ({"optimizer": "paged_adamw_8bit"}, {"optimizer": "adamw_torch"}), ({"r": 8}, {"r": 64}),
     ({"optimizer": "sgd"}, {"optimizer": "adamw_8bit"}), ({"quant": "nf4"}, {"quant": "none"}),
     ({"targets": "attention"}, {"targets": "all-linear"}),
     ({"variant": "lora"}, {"variant": "dora"}),
     ({"checkpointing": "selective", "checkpoint_fraction": 0.75, "slim_activations": True},
      {"checkpointing": "selective", "checkpoint_fraction": 0.75}),
     ({"checkpointing": "offload", "checkpoint_fraction": 0.75},
      {"checkpointing": "selective", "checkpoint_fraction": 0.75}),
     ({"checkpointing": "offload"}, {"checkpointing": "offload", "checkpoint_fraction": 0.75}),
     ({"checkpointing": "selective", "lora_kernel": "fused"},  # train.residual_dtype=fp32: wider
      {"checkpointing": "selective", "lora_kernel": "fused", "residual_fp32": True}),
     ({"checkpointing": "selective", "lora_kernel": "fused", "residual_fp32": True},
      {"checkpointing": "selective", "lora_kernel": "fused", "upcast_frozen": True})],
)  # fmt: skip
def test_levers_move_memory_the_right_way(cheaper: dict, dearer: dict) -> None:
    low = predict_peak_gib(LLAMA3_8B, replace(QLORA, **cheaper))["total"]
    high = predict_peak_gib(LLAMA3_8B, replace(QLORA, **dearer))["total"]
    assert low < high


def test_the_streamed_head_counts_where_it_is_resident() -> None:
    """Allocated: off the peak with recompute (the head's copy is gone before the layers'
    backward); on it without recompute (the peak is at the loss); nothing to move when the head
    is tied. Reserved: its side-stream block stays cached (lean llama3-8b b4, H200: 6.73 GiB
    with it, 6.79 without; 5.40 and 6.28 allocated), which a cap takes back."""
    head_gib = 2.0 * LLAMA3_8B.vocab_size * LLAMA3_8B.hidden_size / GIB
    for mode, saved in (("full", head_gib), ("offload", head_gib), ("none", 0.0)):
        base = replace(QLORA, checkpointing=mode)
        with_head = predict_peak_gib(LLAMA3_8B, base)
        without = predict_peak_gib(LLAMA3_8B, replace(base, head_on_cpu=True))
        assert with_head["tensors_gib"] - without["tensors_gib"] == pytest.approx(saved)
        assert slack_terms(LLAMA3_8B, replace(base, head_on_cpu=True))["head_stream"] == head_gib
    tied = replace(LLAMA3_8B, tie_embeddings=True)
    assert predict_peak_gib(tied, replace(QLORA, head_on_cpu=True)) == predict_peak_gib(tied, QLORA)


def test_prior_reproduces_the_h100_anchors() -> None:
    calib = prior_calibration()  # the anchors and the repo's uncapped CUDA records
    assert calib.n_priors == len(PRIOR_ANCHORS) == 17 and calib.n_records == calibrating_count()
    for shape, setting, measured, label in PRIOR_ANCHORS:
        predicted = predict_peak_gib(shape, setting)["total"]
        # Published (24.2, 10.2 GiB) within 4%: the reference loop ran the same recipe here at
        # 23.01 and 9.95. Probe points within 15%: reserved memory moves with allocator caching
        # (1B batch 2: 11.4 GiB reserved for 8.5 allocated).
        tol = 0.04 if label.startswith("published") else 0.15
        assert predicted == pytest.approx(measured, rel=tol), label


def test_probe_anchors_are_the_probe_output() -> None:
    rows = json.loads((FIXTURES / "gpu_probe_h100.json").read_text())["rows"]
    probe = [a for a in PRIOR_ANCHORS if a[3].startswith("probe")]
    assert len(probe) == len(rows) == 15
    for (_, s, peak, label), row in zip(probe, rows, strict=True):
        assert peak == pytest.approx(row["peak_vram_reserved_gib"], abs=0.01), label
        got = (s.quant, s.double_quant, s.r, s.batch_size, s.seq_len, s.checkpointing,
               s.optimizer, s.variant, s.upcast_frozen, list(s.target_modules()))  # fmt: skip
        targets = row["targets"] if isinstance(row["targets"], list) else None
        want = (row["quant"], row["double_quant"], row["r"], row["batch_size"], row["seq_len"],
                row["checkpointing"], row["optimizer"], row["variant"], row["upcast"],
                targets or list(s.target_modules()))  # fmt: skip
        assert got == want, label


def test_anchor_leave_one_out_error() -> None:
    report = loo_report([])  # no CUDA record at all: the anchors, each out of its own fit
    assert "anchors" in report["basis"] and report["n_holdout"] == 17
    assert report["mape_pct"] < 8  # 6.6% with the counts of today
    assert math.isfinite(report["median_ape_pct"])


def test_calibration_reproduces_its_points() -> None:
    records = load_records(RECORDS)
    points = measured_points(records)
    assert len(points) == 13  # successful CUDA records; CPU, OOM and failed ones don't count
    calib = calibrate(records)
    assert calib.n_records == calibrating_count() + 13  # the repo's uncapped records and these
    assert f"leave-one-out over {scored_count() + 13} CUDA records" in calib.describe()
    for shape, setting, measured, label in points:
        predicted = predict_peak_gib(shape, setting, calib)["total"]
        # the fixtures copy the probe's plain loop (logits materialised), which the fit on the
        # harness's records meets within 11% (checkpointing none: +10%)
        assert predicted == pytest.approx(measured, rel=0.12), label


def test_error_report_is_leave_one_out_over_the_repo_and_the_given_records() -> None:
    records = load_records(RECORDS)
    report = error_report(records)
    n = scored_count() + 13
    assert report["n_holdout"] == n and report["n_fit"] == n - 1
    assert report["basis"] == f"leave-one-out over {n} CUDA records"
    assert "held-out error" in report["line"]
    assert report["max_ape_pct"] >= report["mape_pct"] >= 0
    measured = {p[3]: p[2] for p in measured_points(records)}
    rows = {r["label"]: r for r in report["rows"]}
    for label, peak in measured.items():  # each row is a real record, scored against its peak
        assert rows[label]["measured_gib"] == peak
    # the same records given twice (a sweep of the repo's own records) count once
    assert error_report(repo_records())["n_holdout"] == scored_count()


def test_seeds_table_is_sane() -> None:
    rows = {r["size"]: r for r in seeds_rows()}
    assert list(rows) == ["1B", "3B", "7-8B", "13B", "33B", "70B"]
    eight = rows["7-8B"]["need_gib"]
    assert eight["QLoRA"] < eight["LoRA"] < eight["full FT"]
    assert eight["full FT"] > 16 * 8.0e9 / GIB  # 16 B/param before activations
    assert rows["70B"]["fits"][80]["QLoRA"] and not rows["70B"]["fits"][80]["LoRA"]
    assert rows["1B"]["fits"][8]["QLoRA"]


def test_records_are_read_with_the_fraction_their_levers_ran() -> None:
    """Before offload took a fraction, its records carried the old default 0.5 and recomputed
    every layer: read by what the levers applied, they are full offload, not half."""
    from harness.analysis.pin import experiment_yaml
    from harness.memory.model import setting_from_record

    old = {"config": {"train": {"checkpointing": "offload", "checkpoint_fraction": 0.5},
                      "quant": {"type": "nf4"}},
           "levers": {"checkpointed_layers": 32, "num_layers": 32}}  # fmt: skip
    assert setting_from_record(old).checkpoint_fraction == 1.0
    assert "checkpoint_fraction: 1.0" in experiment_yaml(old, name="x", command="pick")
    new = {**old, "levers": {"checkpointed_layers": 19, "num_layers": 32}}
    assert setting_from_record(new).checkpoint_fraction == 19 / 32
    low = predict_peak_gib(LLAMA3_8B, setting_from_record(old))["total"]
    assert low < predict_peak_gib(LLAMA3_8B, setting_from_record(new))["total"]


def test_a_memory_cap_bounds_the_prediction_and_leaves_calibration() -> None:
    """engine.memory_cap_gib: the allocator frees its cache rather than reserve past the cap, so a
    prediction above it is the cap (the uncapped figure kept); capped records are scored but do
    not calibrate (their peak is the cap's doing)."""
    from conftest import llama3_8b_record_model

    from harness.memory.model import measured_points, setting_from_record

    free = predict_peak_gib(LLAMA3_8B, QLORA)
    slack = free["total"] - free["tensors_gib"]
    assert slack > 0.1
    capped = predict_peak_gib(LLAMA3_8B, replace(QLORA, memory_cap_gib=free["total"] - 0.1))
    assert capped["total"] == pytest.approx(free["total"] - 0.1)
    assert capped["uncapped_total"] == pytest.approx(free["total"]) and not capped["exceeds_cap"]
    roomy = predict_peak_gib(LLAMA3_8B, replace(QLORA, memory_cap_gib=free["total"] + 1.0))
    assert roomy["total"] == pytest.approx(free["total"]) and "uncapped_total" not in roomy
    # the cap takes the slack, not tensors: a cap below them predicts an OOM at the tensors' peak
    tight = predict_peak_gib(LLAMA3_8B, replace(QLORA, memory_cap_gib=free["tensors_gib"] - 0.5))
    assert tight["exceeds_cap"] and tight["total"] == pytest.approx(free["total"] - slack)
    model = llama3_8b_record_model()
    train = {"checkpointing": "offload", "memory_cap_gib": 6.4}
    rec = {"status": "success", "peak_vram_reserved_gib": 6.36, "trial_id": "t", "model": model,
           "config": {"train": train, "quant": {"type": "nf4"}}}  # fmt: skip
    assert setting_from_record(rec).memory_cap_gib == 6.4
    assert len(measured_points([rec])) == 1  # scored; left out of the fit (model._fit)


def test_cuda_graphs_keep_three_hidden_states_per_layer_and_the_adapter_grads() -> None:
    """engine.cuda_graphs: per layer its static output, incoming and outgoing gradient buffers
    (bf16 stream) and its rotary cos/sin, and the adapter gradients, which leave not_counted."""
    fast = Setting(lora_kernel="fused", kernels="liger", batch_size=1, checkpointing="full")
    graphed = Setting(**{**fast.__dict__, "cuda_graphs": True})
    lora_grads = 41_943_040 * 4
    tokens, h, head_dim = 2048, 4096, 128
    expected = 32 * tokens * (3 * 2 * h + 2 * 2 * head_dim) + lora_grads
    assert static_bytes(LLAMA3_8B, graphed)["graph_buffers"] == expected
    assert static_bytes(LLAMA3_8B, fast)["graph_buffers"] == 0
    no, yes = predict_peak_gib(LLAMA3_8B, fast), predict_peak_gib(LLAMA3_8B, graphed)
    assert yes["total"] - no["total"] == pytest.approx(expected / GIB)
    assert no["not_counted"] - yes["not_counted"] == pytest.approx(lora_grads / GIB)
