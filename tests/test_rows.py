"""One record, three tables: the grid summary, the study summary and the report give it the same
row (same columns, same metric names, same values), since all three take it from `record_row`."""

from pathlib import Path

import optuna
import pandas as pd
import pytest

from harness.analysis.frame import METRIC_COLUMNS, SUMMARY_COLUMNS, records_frame
from harness.sweep.grid import summary_frame
from harness.sweep.run import record_attrs
from harness.sweep.spec import StudySpec
from harness.sweep.summary import summary
from harness.trial.record import read_record

TRIAL = Path(__file__).parent / "fixtures" / "records" / "h100-llama3-8b" / "t00"
KEYS = ["lora.r"]


def _study_row(tmp_path: Path, attrs: dict) -> pd.Series:
    """The study summary's row of one COMPLETE trial with these user attrs."""
    storage = f"sqlite:///{tmp_path / 'rows.db'}"
    study = optuna.create_study(study_name="rows", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"lora.r": 16},
            distributions={"lora.r": optuna.distributions.CategoricalDistribution([16])},
            value=0.571,
            user_attrs=attrs,
        )
    )
    spec = StudySpec(name="rows", n_trials=1, space={"lora.r": [16]})
    return summary(study, spec).iloc[0]


def _same(a: object, b: object) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def test_grid_study_and_report_give_a_record_the_same_row(tmp_path: Path) -> None:
    rec = {**read_record(TRIAL), "_dir": str(TRIAL)}
    grid = summary_frame([rec], KEYS).iloc[0]
    study = _study_row(tmp_path, {"record_dir": str(TRIAL.resolve())})
    report = records_frame([rec]).iloc[0]
    assert list(grid.index) == [*KEYS, *SUMMARY_COLUMNS, "record_dir"]
    assert list(study.index) == ["trial", "state", *KEYS, *SUMMARY_COLUMNS, "record_dir",
                                 "objective_0", "feasible", "pareto"]  # fmt: skip
    assert [c for c in report.index if c in SUMMARY_COLUMNS] == list(SUMMARY_COLUMNS)
    assert not {"train_tokens_per_s", "eval_loss", "final_train_loss"} & set(report.index)
    for col in [*KEYS, *SUMMARY_COLUMNS]:
        assert _same(grid[col], study[col]) and _same(grid[col], report[col]), col
    assert grid["loss_tokens_per_s"] == rec["throughput"]["loss_tokens_per_s"] == 2950
    assert grid["loss_eval"] == rec["loss"]["eval"] and grid["status"] == "success"


def test_a_study_row_rebuilt_from_user_attrs_keeps_the_record_metrics(tmp_path: Path) -> None:
    """The record.json is gone: the flat attrs stored with the trial give back its metrics."""
    rec = read_record(TRIAL)
    rec["score_stderr"], rec["loss"]["eval_stderr"] = 0.012, 0.004  # as today's trials write
    attrs = record_attrs(rec, tmp_path / "gone")
    assert set(METRIC_COLUMNS) - {"peak_rss_gib"} <= set(attrs)  # a CUDA record: no RSS
    study = _study_row(tmp_path, attrs)
    report = records_frame([rec]).iloc[0]
    assert "record.json missing" in study["error"] and study["status"] == "success"
    for col in METRIC_COLUMNS:
        assert _same(study[col], report[col]) or study[col] == pytest.approx(report[col]), col
