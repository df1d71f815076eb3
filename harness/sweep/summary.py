"""The end of a study: one summary row per result (read back from the storage and the records
beside it), the best trial or the Pareto set, printed and written as CSV, then the report.

    outputs/studies/<name>/summary.csv     one row per trial result, in trial order
    outputs/studies/<name>/pareto.csv      the feasible non-dominated COMPLETE trials (or the best)
    outputs/studies/<name>/report/         harness.report (when it is available)
"""

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from harness.analysis.optuna_records import trial_record, trial_records
from harness.analysis.pareto import pareto_mask
from harness.sweep.grid import format_table, run_report, summary_frame, write_csv
from harness.sweep.spec import StudySpec
from harness.sweep.storage import is_result


def summary(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """One row per result: trial number, Optuna state, the searched params, the record metrics,
    the objective values, feasibility and whether the trial is best / on the Pareto set."""
    trials = _results(study)
    frame = summary_frame([trial_record(t) for t in trials], list(spec.space))
    for key in spec.space:  # typed values from Optuna rather than override text
        frame[key] = [t.params.get(key) for t in trials]
    frame.insert(0, "state", [t.state.name for t in trials])
    frame.insert(0, "trial", [t.number for t in trials])
    for i in range(len(spec.objectives)):
        frame[f"objective_{i}"] = [t.values[i] if t.values else np.nan for t in trials]
    frame["feasible"] = [feasible(t) for t in trials]
    # Non-dominated among COMPLETE, feasible trials; with one objective: the best one(s).
    objectives = {f"objective_{i}": d for i, d in enumerate(spec.directions)}
    complete = frame["state"] == TrialState.COMPLETE.name
    frame["pareto"] = pareto_mask(frame, objectives, among=complete & frame["feasible"])
    return frame


def feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def summarize(study: optuna.Study, spec: StudySpec, study_dir: Path, *, report: bool) -> Path:
    """Write summary.csv and pareto.csv in `study_dir`, print them, then build the report."""
    frame = summary(study, spec)
    csv = write_csv(frame, study_dir / "summary.csv")
    front = frame[frame["pareto"]]
    write_csv(front, study_dir / "pareto.csv")
    print(format_table(frame))
    print(f"summary: {csv}  ({len(frame)} results of {spec.n_trials})")
    label = "Pareto set" if len(spec.objectives) > 1 else "best trial"
    objectives = ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives)
    if front.empty:
        print(f"{label} ({objectives}): none (no feasible COMPLETE trial)")
    else:
        print(f"{label} ({objectives}):")
        print(format_table(front))
    if report:
        objectives = [vars(o) for o in spec.objectives]  # the report ranks by them
        records = [
            {**r, "_objectives": objectives}
            for t in _results(study)
            for r in trial_records(t)
            if "schema_version" in r
        ]
        if records:
            run_report(records, study_dir / "report", title=f"study {spec.name}")
    return csv


def _results(study: optuna.Study) -> list[FrozenTrial]:
    return sorted((t for t in study.get_trials() if is_result(t)), key=lambda t: t.number)
