"""The records of an Optuna study, and the flat user attrs a study keeps of each one.

A trial's ``record_dir`` user attr says where its record.json is (a trial run with several seeds,
``replicates:``, has one per seed in ``replicate_dirs``: each is a record of its own). Where that
file is gone (a worker that died for good, a host whose disk is not shared) the record is
rebuilt, partly, from what Optuna kept: the trial's params, its state and the flat user attrs of
`ATTRS`. Each record carries ``_objectives``, the study's own (what its report and pick rank by).
"""

from pathlib import Path
from typing import Any

from harness.analysis.frame import METRICS, StudySource, set_path
from harness.trial.record import RECORD_NAME, read_record

# Optuna trial state -> record status, for a trial that carries no `status` user attr.
STATUS_OF_STATE = {"COMPLETE": "success", "FAIL": "failed", "PRUNED": "pruned"}
# Flat user attrs stored with each finished trial (harness.sweep.run.record_attrs): {attr: dotted
# record path}. Metric attrs are named as the table columns are, so a record rebuilt from them
# has the same row.
ATTRS = {
    **dict(METRICS),
    "oom_phase": "oom.phase",
    "oom_peak_reserved_gib": "oom.peak_reserved_gib",
    "oom_peak_rss_gib": "oom.peak_rss_gib",
    "config_hash": "config_hash",
}


def trial_status(trial: Any) -> str:
    """A finished trial's record status: its `status` attr, else what its Optuna state means."""
    state = trial.state.name
    return trial.user_attrs.get("status") or STATUS_OF_STATE.get(state, state.lower())


def study_records(study: Any) -> list[dict[str, Any]]:
    """The record of every trial of a study (an ``optuna.Study`` or a `StudySource`), each once."""
    if isinstance(study, StudySource):
        from harness.sweep.storage import load_existing_study

        study = load_existing_study(study.storage, study.study)
    trials = study.get_trials(deepcopy=False)
    # A trial whose worker died is superseded by its retry ("failed_trial") or by its result
    # told from its record ("recorded_trial", same record dir): report each trial once.
    superseded = {t.system_attrs.get(k) for t in trials for k in ("failed_trial", "recorded_trial")}
    objectives = study.user_attrs.get("objectives")
    recs = [r for t in trials if t.number not in superseded for r in trial_records(t)]
    return [{**r, "_objectives": objectives} if objectives else r for r in recs]


def trial_records(trial: Any) -> list[dict[str, Any]]:
    """A trial's records: one per replicate seed that wrote one, else `trial_record`."""
    dirs = [Path(d) for d in trial.user_attrs.get("replicate_dirs") or []]
    found = [{**read_record(d), "_path": str(d / RECORD_NAME), "_dir": str(d)}
             for d in dirs if (d / RECORD_NAME).is_file()]  # fmt: skip
    return found or [trial_record(trial)]


def trial_record(trial: Any) -> dict[str, Any]:
    """A trial's record with ``_path`` and ``_dir``; rebuilt from Optuna where the file is gone."""
    rec_dir = trial.user_attrs.get("record_dir")
    path = Path(rec_dir) / RECORD_NAME if rec_dir else None
    if path is not None and path.is_file():
        rec = {**read_record(path), "_path": str(path)}
    else:
        rec = _rebuilt(trial, rec_dir)
    return {**rec, "_dir": rec_dir or ""}


def _rebuilt(trial: Any, rec_dir: str | None) -> dict[str, Any]:
    """A partial record from Optuna's view of a trial whose record.json is missing."""
    attrs = trial.user_attrs
    why = f"record.json missing ({rec_dir or 'no record_dir user attr'}); row from Optuna"
    rec: dict[str, Any] = {
        "trial_id": f"optuna-{trial.number}",
        "status": trial_status(trial),
        "error": attrs.get("error") or why,
        "config": {},
        "overrides": [f"{key}={val}" for key, val in trial.params.items()],
        "_path": f"optuna trial {trial.number}",
    }
    for key, val in trial.params.items():
        set_path(rec["config"], key, val)
    for name, path in ATTRS.items():
        if name in attrs:
            set_path(rec, path, attrs[name])
    if rec.get("score") is None and trial.values:
        rec["score"] = trial.values[0]
    return rec
