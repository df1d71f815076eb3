"""A trial's record -> its Optuna result: state, objective values, user attrs and constraints.

The one mapping tells a live trial (`tell`) and, on resume, a trial whose worker died after
writing its record but before telling it (`tell_recorded`): the record is the result, so such a
trial is told once from it and never run again.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.sweep.run import record_attrs
from harness.sweep.spec import StudySpec, objective_values
from harness.trial.record import RECORD_NAME, read_record


@dataclass
class Result:
    state: TrialState
    values: list[float] | None  # COMPLETE only
    attrs: dict
    constraints: dict[str, float]


def result_of(spec: StudySpec, rec: dict, out_dir: Path) -> Result:
    """Failures are results: oom / failed / diverged trials end FAIL *with* a status attr (so
    they count toward n_trials and are never rerun); the samplers leave FAIL trials out."""
    attrs = record_attrs(rec, out_dir)
    constraints = {}
    for con in spec.constraints:
        value = con.value(rec)
        if value is not None:  # not measured (CPU VRAM, pruned early): nothing shows a breach
            constraints[str(con)] = value
    values = objective_values(spec, rec)
    status = rec.get("status")
    if status == "success" and values is not None:
        return Result(TrialState.COMPLETE, values, attrs, constraints)
    if status == "success":
        metrics = [o.metric for o in spec.objectives]
        attrs["error"] = f"an objective is missing or not finite: {metrics}"
    state = TrialState.PRUNED if status == "pruned" else TrialState.FAIL
    return Result(state, None, attrs, constraints)


def replicate_result(spec: StudySpec, recs: list[dict], out_dirs: list[Path]) -> Result:
    """One trial run with several seeds: the first replicate that is not a success decides the
    state; else COMPLETE with the mean of each objective over the seeds, and the user attrs of
    the first replicate plus ``replicates``, ``objective_sd`` and ``replicate_dirs``. A
    constraint holds only when it holds for every seed (the largest value is kept)."""
    results = [result_of(spec, r, d) for r, d in zip(recs, out_dirs, strict=True)]
    bad = next((r for r in results if r.state != TrialState.COMPLETE), None)
    first = bad or results[0]
    attrs = {**first.attrs, "replicates": len(recs),
             "replicate_dirs": [str(d.resolve()) for d in out_dirs]}  # fmt: skip
    constraints = {k: max(r.constraints.get(k, v) for r in results)
                   for k, v in first.constraints.items()}  # fmt: skip
    if bad is not None:
        return Result(bad.state, None, attrs, constraints)
    values = [statistics.fmean(v) for v in zip(*(r.values for r in results), strict=True)]
    attrs["objective_sd"] = [statistics.stdev(v) for v in zip(*(r.values for r in results),
                                                              strict=True)]  # fmt: skip
    return Result(TrialState.COMPLETE, values, attrs, constraints)


def tell(study: optuna.Study, trial: optuna.Trial, result: Result) -> None:
    for key, value in result.attrs.items():
        trial.set_user_attr(key, value)
    for key, value in result.constraints.items():
        trial.set_constraint(key, value)
    try:
        if result.values is not None:
            study.tell(trial, result.values)
        else:
            study.tell(trial, state=result.state)
    except RuntimeError as e:
        # GridSampler calls study.stop() after the last grid point, which raises outside
        # study.optimize (documented for ask-and-tell, optuna#5141). The state is already
        # stored; the driver's own count ends the loop.
        if "Study.stop" not in str(e):
            raise


def tell_recorded(study: optuna.Study, dead: FrozenTrial, *, spec: StudySpec) -> bool:
    """For a trial failed by the heartbeat check: when its record is on disk, add its result
    from the record (same params, record dir and grid point) and return True; the dead trial
    stays a FAIL without a status, which no count or report reads. False: no record."""
    rec_dir = dead.user_attrs.get("record_dir")
    dirs = [Path(d) for d in dead.user_attrs.get("replicate_dirs") or []]
    if dirs and all((d / RECORD_NAME).is_file() for d in dirs):
        result = replicate_result(spec, [read_record(d) for d in dirs], dirs)
    elif dirs or not rec_dir or not (Path(rec_dir) / RECORD_NAME).is_file():
        return False
    else:
        result = result_of(spec, read_record(Path(rec_dir)), Path(rec_dir))
    study.add_trial(
        optuna.create_trial(
            state=result.state,
            values=result.values,
            params=dead.params,
            distributions=dead.distributions,
            user_attrs={**dead.user_attrs, **result.attrs},
            system_attrs={**dead.system_attrs, "recorded_trial": dead.number},
            intermediate_values=dead.intermediate_values,
            constraints=result.constraints,
        )
    )
    return True
