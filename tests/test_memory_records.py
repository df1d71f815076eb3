"""The memory model against every committed CUDA record: leave-one-out within 5% median and 10%
max, the rules that read a record (carried memory, TRL's offload, Unsloth, caps), and pick
printing it. Expected counts come from the record files (tests/memory_counts.py)."""

from pathlib import Path

import pytest
from memory_counts import cuda_records, is_scored, scored_count

from harness.analysis.sources import load_records
from harness.memory.model import error_report, measured_points, predict_peak_gib
from harness.memory.records import describes, repo_records, setting_from_record, shape_from_record
from harness.memory.terms import GIB

FIXTURES = Path(__file__).parent / "fixtures" / "records" / "h100-llama3-8b"


def _by_label(part: str) -> dict:
    return next(r for r in repo_records() if r["_label"].endswith(part))


def test_leave_one_out_over_every_repo_record_meets_the_targets() -> None:
    for by_setting in (False, True):
        report = error_report([], by_setting=by_setting)
        assert report["n_holdout"] == scored_count(), report["basis"]
        assert report["median_ape_pct"] <= 5.0 and report["max_ape_pct"] <= 10.0, report["line"]
    labels = {r["label"] for r in report["rows"]}
    assert any("shapes" in x and "smollm2" in x for x in labels)  # every shape and engine counts
    assert any("cap" in x for x in labels) and any("host" in x for x in labels)
    assert any(x.endswith("_loop") for x in labels)  # the reference loop counts too


def test_every_scored_record_is_in_the_table_and_no_other() -> None:
    rows = {r["label"] for r in error_report([])["rows"]}
    want = {r["_path"].removesuffix("/record.json") for r in cuda_records() if is_scored(r)}
    assert rows == want


def test_only_successful_records_of_a_described_mechanism_count() -> None:
    recs = [r for r in repo_records() if (r.get("device") or {}).get("type") == "cuda"]
    assert len(recs) == len(cuda_records())
    failed = [r["_label"] for r in recs if r.get("status") != "success"]
    assert failed and not set(failed) & {p[3] for p in measured_points(recs)}
    trl = _by_label("reports/device/records/llama3-8b_2.json")
    assert not describes(trl)  # offload before the harness had its own: TRL's hooks
    assert describes(_by_label("presets/20261206T052336Z-h100-80gb-hbm3/lean"))
    unsloth = [r for r in recs if (r.get("levers") or {}).get("backend") == "unsloth"]
    assert unsloth and not any(describes(r) for r in unsloth)  # a peer, never picked
    assert len(measured_points(recs)) == scored_count() < len(recs)


def test_memory_an_earlier_trial_left_is_carried_and_counted() -> None:
    """The shapes run of 15:28 ran a shape's presets in one process: fast and lean started with
    plain's fp32 embedding table still allocated; the later run did not."""
    table = {"llama3-8b": 1.957, "qwen2.5-1.5b": 0.869, "smollm2-135m": 0.105}
    for rec in repo_records():
        if "shapes/" not in rec["_label"] or rec.get("status") != "success":
            continue
        carried = setting_from_record(rec).carried_gib
        leaked = "152853Z" in rec["_label"] and not rec["_label"].endswith("_plain")
        name = rec["_label"].rsplit("/", 1)[1].split("_b")[0].removesuffix("_fp4")
        assert carried == pytest.approx(table[name] if leaked else 0.0, abs=0.001), rec["_label"]
    rec = _by_label("shapes/20261204T152853Z-h200/llama3-8b_b1_lean")
    shape, setting = shape_from_record(rec["model"]), setting_from_record(rec)
    fresh = predict_peak_gib(shape, setting.__class__(**{**vars(setting), "carried_gib": 0.0}))
    assert predict_peak_gib(shape, setting)["total"] - fresh["total"] == pytest.approx(1.957, 1e-3)


def test_what_older_records_ran_is_read_from_their_levers() -> None:
    old = _by_label("levers/20261124T135303Z-h100-80gb-hbm3/plain")  # before chunked_loss was read
    assert "chunked_loss" not in old["levers"] and setting_from_record(old).chunked_loss
    assert not setting_from_record(old).expandable_segments
    early_fast = _by_label("reports/device/records/llama3-8b_1.json")  # Liger before its RoPE
    assert not setting_from_record(early_fast).liger_rope
    fast = _by_label("presets/20261204T190802Z-h200/fast")
    s = setting_from_record(fast)
    assert s.liger_rope and s.expandable_segments and s.chunked_loss and s.carried_gib == 0.0


def test_a_binding_cap_predicts_the_cap() -> None:
    rows = {r["label"]: r for r in error_report([])["rows"]}
    capped = [r for r in repo_records() if "cap" in r["_label"] and r.get("status") == "success"]
    assert len(capped) >= 8  # records are append-only: the eight of today stay
    for rec in capped:
        row = rows[rec["_label"]]
        cap = setting_from_record(rec).memory_cap_gib
        assert row["predicted_gib"] == pytest.approx(cap) and abs(row["error_pct"]) < 1.0
    lean = setting_from_record(_by_label("levers/20261204T133944Z-h200/lean_cap6.4"))
    shape = shape_from_record(_by_label("levers/20261204T133944Z-h200/lean_cap6.4")["model"])
    out = predict_peak_gib(shape, lean)
    assert out["uncapped_total"] > 6.4 and out["tensors_gib"] < 6.4 < out["uncapped_total"]
    assert out["tensors_gib"] * GIB > 0 and not out["exceeds_cap"]


def test_pick_prints_the_leave_one_out_error(capsys: pytest.CaptureFixture) -> None:
    from harness.analysis.pick import main

    assert main(["--budget-gib", "12", str(FIXTURES)]) == 0  # nothing measured fits: predicted
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "predicted peak" in x)
    fixtures = len(measured_points(load_records(FIXTURES)))
    n = scored_count() + fixtures
    assert "% median, " in line and f"% max held-out error, leave-one-out over {n} CUDA" in line
    assert main(["--table"]) == 0
    n = scored_count()
    assert f"max held-out error, leave-one-out over {n} CUDA records" in capsys.readouterr().out
