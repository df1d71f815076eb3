"""Decisions with confidence, on a sweep whose per-item outcomes are known (decide_fixture.py):
intervals, paired differences and the pick's tie-break against values computed by hand."""

import math
from pathlib import Path

import pytest
from decide_fixture import record, write_sweep, write_trial

from harness.analysis.decide import decide
from harness.analysis.frame import records_frame
from harness.analysis.items import loss_items, paired, score_items
from harness.analysis.pick import main
from harness.analysis.rankby import rank_by
from harness.analysis.settings import aggregate, has_replicates
from harness.analysis.sources import load_records
from harness.analysis.stats import interval, mcnemar_p, needed_n, paired_delta, welch_delta
from harness.errors import ConfigError

Z = 1.959964


@pytest.fixture
def sweep(tmp_path: Path) -> list[dict]:
    return load_records(write_sweep(tmp_path / "sweep", tasks=["qh_embedded"]))


def _by_r(records: list[dict]) -> dict[int, dict]:
    return {r["config"]["lora"]["r"]: r for r in records}


def test_score_interval_is_value_plus_minus_1_96_stderr() -> None:
    # 8 of 10 right: lm-eval's stderr sqrt(0.8 * 0.2 / 9) = 0.133333.
    rec = record(16)
    assert rec["score_stderr"] == pytest.approx(0.133333, abs=1e-6)
    ci = interval(rec["score"], rec["score_stderr"])
    assert (ci.lo, ci.hi) == pytest.approx((0.8 - Z * 0.133333, 0.8 + Z * 0.133333), abs=1e-5)
    assert ci.text() == "0.800 (95% CI 0.539-1.061)"


def test_paired_score_delta_tie_and_clear_winner(sweep: list[dict]) -> None:
    by = _by_r(sweep)
    lead = score_items(by[16])
    # r16 - r4 per item: +1 on items 6 and 7, -1 on item 8: mean 0.1; sum of squared deviations
    # 2 * 0.81 + 1.21 + 7 * 0.01 = 2.9, se = sqrt(2.9 / (10 * 9)) = 0.179505.
    tie = paired_delta(paired(lead, score_items(by[4])))
    assert (tie.delta, tie.se, tie.n) == pytest.approx((0.1, 0.179505, 10), abs=1e-6)
    assert (tie.lo, tie.hi) == pytest.approx((0.1 - Z * 0.179505, 0.1 + Z * 0.179505), abs=1e-5)
    assert not tie.excludes_zero()
    assert tie.p_mcnemar == 1.0  # b=2, c=1: 2 * P(X <= 1 | 3, 1/2) = 2 * 4/8, capped at 1
    # r16 - r64: +1 on 8 items: mean 0.8, se = sqrt((8 * 0.04 + 2 * 0.64) / 90) = 0.133333.
    win = paired_delta(paired(lead, score_items(by[64])))
    assert (win.delta, win.se) == pytest.approx((0.8, 0.133333), abs=1e-6)
    assert win.lo == pytest.approx(0.8 - Z * 0.133333, abs=1e-5) and win.excludes_zero()
    assert win.p_mcnemar == pytest.approx(2 / 256)  # b=8, c=0: 2 * 0.5^8


def test_paired_loss_delta_is_token_weighted(sweep: list[dict]) -> None:
    by = _by_r(sweep)
    # r16 - r4 per example: -0.1, -0.1, +0.1, -0.2 on 10, 20, 10, 10 tokens: -4 / 50 = -0.08;
    # se^2 = sum((w (d - mean))^2) / (n (n-1) wbar^2) = (0.04+0.16+3.24+1.44) / 12 / 12.5^2.
    d = paired_delta(paired(loss_items(by[16]), loss_items(by[4])))
    se = math.sqrt(4.88 / 12) / 12.5
    assert (d.delta, d.se) == pytest.approx((-0.08, se), abs=1e-9)
    assert d.hi == pytest.approx(-0.08 + Z * se, abs=1e-6) and not d.excludes_zero()


def test_pick_breaks_the_tie_by_memory_and_says_so(sweep: list[dict]) -> None:
    frame = records_frame(sweep)
    metric = rank_by(sweep, frame)
    assert metric.name == "score"  # the sweep named its tasks
    choice = decide(sweep, frame, 24, objective=metric)
    v = choice.verdict
    assert v.leader.label == "r16" and [c.label for c in v.tie] == ["r16", "r4"]
    assert choice.record["config"]["lora"]["r"] == 4
    assert v.line.startswith("r16 and r4 are within noise (r16 - r4 = +0.100 (95% CI ")
    assert "10 paired items, McNemar p=1" in v.line
    assert "picking r4: 0.3 GiB less peak memory than r16." in v.line
    # Within 10.0 * 1.1 = 11 GiB nothing changes; at 10.1 GiB r16 (9.3 * 1.1 = 10.23) is out:
    only = decide(sweep, frame, 10.1, objective=metric)
    assert only.record["config"]["lora"]["r"] == 4 and only.verdict.line.endswith("candidate.")


def test_same_memory_falls_to_throughput_then_params(tmp_path: Path) -> None:
    recs = [record(16), record(4)]
    recs[1]["peak_vram_reserved_gib"] = 9.3 * 1.01  # within 2%: the same memory
    recs[1]["throughput"]["loss_tokens_per_s"] = 1000.0 * 1.01  # within 5%: the same speed
    for i, rec in enumerate(recs):
        write_trial(tmp_path, str(i), rec)
    records = load_records(tmp_path)
    choice = decide(records, records_frame(records), 24, objective="score")
    assert choice.record["config"]["lora"]["r"] == 4
    assert "the same memory and speed, 3.0M fewer trainable parameters than r16" in (
        choice.verdict.line
    )


def test_nothing_separates_says_what_would(tmp_path: Path) -> None:
    write_trial(tmp_path, "0", record(16))
    write_trial(tmp_path, "1", record(4))
    records = load_records(tmp_path)
    line = decide(records, records_frame(records), 24, objective="score").verdict.line
    # 10 items at se 0.179505 for |delta| 0.1: 10 * (2.8016 * 0.179505 / 0.1)^2 = 253 items.
    assert needed_n(10, 0.179505, 0.1) == 253
    assert "Nothing separates the candidates" in line and "~253 items (now 10)" in line


def test_replicates_aggregate_per_setting(tmp_path: Path) -> None:
    scores = {16: [0.80, 0.70, 0.75], 4: [0.60, 0.62, 0.58]}
    for r, vals in scores.items():
        for seed, s in enumerate(vals):
            write_trial(tmp_path, f"r{r}s{seed}", record(r, seed=seed, score=s,
                        tasks=["qh_embedded"]), items=False)  # fmt: skip
    records = load_records(tmp_path)
    frame = records_frame(records)
    assert has_replicates(frame) and set(frame["setting"]) == {"r16", "r4"}
    assert sorted(frame["label"])[:2] == ["r16 seed=0", "r16 seed=1"]
    agg = aggregate(frame, "score", "score_stderr").set_index("setting")
    # r16: mean 0.75, sd 0.05, t(0.975, 2) = 4.3027: 0.75 +- 4.3027 * 0.05 / sqrt(3).
    assert agg.loc["r16", "n"] == 3 and agg.loc["r16", "mean"] == pytest.approx(0.75)
    assert agg.loc["r16", "sd"] == pytest.approx(0.05)
    assert agg.loc["r16", "hi"] == pytest.approx(0.75 + 4.302653 * 0.05 / math.sqrt(3))
    # Welch: 0.75 - 0.60 = 0.15, se = sqrt(0.0025/3 + 0.0004/3) = 0.031091.
    d = welch_delta(scores[16], scores[4])
    assert (d.delta, d.se) == pytest.approx((0.15, 0.031091), abs=1e-6) and d.excludes_zero()
    choice = decide(records, frame, 24, objective="score")
    assert choice.verdict.tie == [choice.verdict.leader] and choice.verdict.leader.label == "r16"
    assert "3 seeds a side" in choice.verdict.line


def test_mcnemar_and_power_by_hand() -> None:
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 0) == pytest.approx(2 / 32)
    assert needed_n(10, 0.1, 0) is None


def test_grid_default_ranks_by_loss_without_named_tasks(tmp_path: Path, capsys) -> None:
    records = load_records(write_sweep(tmp_path / "s"))
    frame = records_frame(records)
    metric = rank_by(records, frame)
    assert metric.name == "loss" and "no lm-eval task named" in metric.why
    assert main(["--budget-gib", "24", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "Ranked by held-out loss (lower is better" in out
    assert "r16 and r4 are within noise (r16 - r4 = -0.0800" in out


def test_a_metric_missing_everywhere_is_an_error(tmp_path: Path, capsys) -> None:
    recs = [record(16), record(4)]
    for i, rec in enumerate(recs):
        rec["score"] = None
        write_trial(tmp_path, str(i), rec, items=False)
    records = load_records(tmp_path)
    with pytest.raises(ConfigError, match="no successful trial has a score"):
        rank_by(records, records_frame(records), "score")
    assert main(["--budget-gib", "24", str(tmp_path), "--objective", "score"]) == 2
    assert "--objective='score': no successful trial has a score" in capsys.readouterr().err


def test_a_score_ranking_names_its_tasks_metrics_and_form() -> None:
    """The records' score_detail (written by the trial) tells what the headline averaged."""
    import pandas as pd

    from harness.analysis.rankby import rank_by, score_source

    detail = {"scored_form": "merged", "tasks": {
        "qh_arc_easy": {"metric": "acc_norm", "in_score": True},
        "qh_lambada": {"metric": "acc", "in_score": True},
        "qh_wikitext2": {"metric": "word_perplexity", "in_score": False},
    }}  # fmt: skip
    recs = [{"status": "success", "score": 0.3, "score_detail": detail, "overrides": [],
             "config": {"eval": {"tasks": ["qh_arc_easy", "qh_lambada"]}}}]  # fmt: skip
    assert score_source(recs) == "mean of qh_arc_easy acc_norm, qh_lambada acc; merged form"
    frame = pd.DataFrame([{"status": "success", "score": 0.3, "loss_eval": 1.0}])
    metric = rank_by(recs, frame)
    assert metric.name == "score"
    assert metric.describe().endswith(
        "score = mean of qh_arc_easy acc_norm, qh_lambada acc; merged form)"
    )
    assert score_source([{"score_detail": None}]) is None
