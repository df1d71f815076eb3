"""What counts toward a study's n_trials and what runs next: the failure limit over this run's
results, the files that explain its failures, and a grid's failed points run again on a rerun.

Usable results (success, oom, pruned, diverged) count; "failed" ones do not (storage.is_usable).
"""

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.analysis.optuna_records import trial_status
from harness.sweep.spec import StudySpec
from harness.sweep.storage import is_result, is_usable, progress


def limit_reached(study: optuna.Study, spec: StudySpec, first_number: int) -> str | None:
    """Why the failure limit stops this run (trials numbered from `first_number`), or None.
    A study whose usable results are all in has nothing left to stop. Failed trials do not
    count toward n_trials, so n_trials of them in one run stop it whatever the limit says."""
    prog, n = progress(study), spec.n_trials
    if len(prog.usable) >= n:
        return None
    statuses = [trial_status(t) for t in prog.results if t.number >= first_number]
    if statuses.count("failed") >= n:
        return f"{n} trials failed in this run (n_trials={n})"
    return spec.limit.check(statuses)


def failure_files(study: optuna.Study, first_number: int, study_dir: Path) -> str:
    """The files that say why this run's last failures failed: error.txt where a traceback was
    written, else the record (a NaN loss or a collapse writes only record.json)."""
    files = []
    for t in progress(study).results:
        rec_dir = t.user_attrs.get("record_dir")
        if t.number < first_number or trial_status(t) in ("success", "pruned") or not rec_dir:
            continue
        found = [Path(rec_dir) / n for n in ("error.txt", "record.json")]
        files += [str(p) for p in found if p.is_file()][:1]
    return ", ".join(files[-5:]) or f"the trial dirs under {study_dir}"


def grid_has_next(study: optuna.Study, spec: StudySpec, first_number: int) -> bool:
    """Grids: a point whose results all failed runs again when the study is rerun (its cause
    fixed): it is queued here. Within one run, once every point has been tried, the points that
    failed in it wait for that rerun (False: nothing to ask)."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True  # a queued retry: study.ask() pops it
    busy = (TrialState.RUNNING, TrialState.WAITING)
    covered = {_point(t) for t in trials if is_usable(t) or t.state in busy}
    tried = {_point(t) for t in trials if is_result(t)}
    if len(tried | covered) < spec.grid_size:
        return True  # points never tried: the sampler draws one
    old = [t for t in trials if is_result(t) and _point(t) not in covered]
    old = [t for t in old if t.number < first_number]
    if old:
        study.enqueue_trial(old[0].params)
    return bool(old)


def _point(trial: FrozenTrial) -> tuple:
    return tuple(sorted(trial.params.items()))
