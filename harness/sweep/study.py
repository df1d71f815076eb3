"""Optuna studies over the one trial routine: durable, resumable, shared by several workers.

    python -m harness.study sweeps/tpe.yaml                       # run, or resume, the study
    python -m harness.study sweeps/tpe.yaml model=qwen2.5-1.5b train.device=cuda --n-trials 64
    python -m harness.study sweeps/rank.yaml --isolate            # a fresh process per trial
    python -m harness.study sweeps/tpe.yaml --storage postgresql://user@db-host/optuna  # hosts

Rerunning the same command resumes: finished trials are kept, a trial whose worker died is failed
once its heartbeat is `grace` s old and run again (or told from its record.json, when the worker
died after writing it), and n_trials is the study's total. Several
workers (one per GPU: CUDA_VISIBLE_DEVICES=i, or one per host) share a study through its storage.
Exit codes: 0 done, 2 bad settings, 3 stopped by the failure-rate limit, 130 interrupted.
"""

import argparse
import functools
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from harness.config.compose import compose_trial
from harness.errors import ConfigError
from harness.logs import quiet_third_party
from harness.paths import studies_dir
from harness.sweep.accounting import failure_files, grid_has_next, limit_reached
from harness.sweep.grid import TrialClock
from harness.sweep.pool import process_pool
from harness.sweep.run import (
    check_study,
    run_in_process,
    run_isolated,
)
from harness.sweep.spec import (
    StudySpec,
    check_heartbeat,
    load_spec,
    make_pruner,
    make_sampler,
    objective_values,
    suggest_overrides,
)
from harness.sweep.storage import (
    Heartbeat,
    check_url,
    default_storage,
    hide_passwords,
    mask_url,
    normalize_url,
    open_storage,
    progress,
    study_lock,
)
from harness.sweep.summary import summarize
from harness.sweep.tell import replicate_result, result_of, tell, tell_recorded

log = logging.getLogger("harness.study")
# Heartbeats, stale-trial retries and fail_stale_trials are "experimental" since Optuna 2.8 and
# stable in use; the driver beats itself (Heartbeat), which is what the ask/tell warning is about.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")


class Driver:
    """One worker of one study: ask under the study lock, run, tell; until n_trials results."""

    def __init__(
        self,
        spec: StudySpec,
        spec_path: Path,
        base: list[str],
        *,
        out_root: Path,
        isolate: bool,
        report: bool,
    ) -> None:
        self.spec, self.spec_path, self.base = spec, spec_path, base
        self.isolate, self.report = isolate, report
        self.study_dir = out_root / spec.name
        if spec.storage:
            check_url(spec.storage, exists=False)
        self.url = normalize_url(spec.storage or default_storage(spec.name, out_root))
        hb = {"interval": 60, "grace": 180, "max_retry": 2, **spec.heartbeat}
        self.pool = None if isolate else process_pool()
        with study_lock(self.url, spec.name):  # first workers race to create the tables/study
            told = functools.partial(tell_recorded, spec=spec)
            self.storage = open_storage(self.url, **hb, on_recorded=told)
            self.study = optuna.create_study(
                storage=self.storage,
                study_name=spec.name,
                directions=spec.directions,
                sampler=make_sampler(spec),
                pruner=make_pruner(spec),
                load_if_exists=True,
            )
        # What the study optimizes, for its report and pick (harness/analysis/rankby.py).
        self.study.set_user_attr("objectives", [vars(o) for o in spec.objectives])
        wanted = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
        if self.study.directions != wanted:
            raise ConfigError(
                "objectives",
                spec.directions,
                f"study {spec.name!r} in {mask_url(self.url)} "
                f"has {[d.name.lower() for d in self.study.directions]}",
            )
        self.first_number = len(self.study.get_trials(deepcopy=False))
        self.clock = TrialClock(spec.n_trials)

    def run(self) -> int:
        n = self.spec.n_trials
        log.info("study %r in %s: %d trials in all", self.spec.name, mask_url(self.url), n)
        waiting = False
        while True:
            with study_lock(self.url, self.spec.name):
                optuna.storages.fail_stale_trials(self.study)
                prog = progress(self.study)
                nxt = self._ask(len(prog.usable)) if prog.taken < n else None
            if nxt is None:
                if len(prog.usable) >= n or not prog.running:
                    break
                if not waiting:  # a trial of another worker, or of a killed run not yet stale
                    log.info(
                        "waiting for running trials %s to finish or go stale",
                        [t.number for t in prog.running],
                    )
                waiting = True
                time.sleep(min(self.storage.get_heartbeat_interval() or 10, 10))
                continue
            waiting = False
            self._run(*nxt)
            self.clock.end()
            why = limit_reached(self.study, self.spec, self.first_number)
            if why:
                summarize(self.study, self.spec, self.study_dir, report=False)
                files = failure_files(self.study, self.first_number, self.study_dir)
                print(
                    f"study {self.spec.name!r} stopped by the failure-rate limit: {why}. "
                    f"Look at {files}, fix the cause, and rerun the same command to resume.",
                    file=sys.stderr,
                )
                return 3
        summarize(self.study, self.spec, self.study_dir, report=self.report)
        if len(progress(self.study).usable) < n:  # grid points that failed in this run
            files = failure_files(self.study, self.first_number, self.study_dir)
            log.warning("failed grid points run again when the study is rerun; see %s", files)
        return 0

    def _ask(self, done: int) -> tuple[optuna.Trial, list[str], Path] | None:
        """Create (or pop a queued retry of) a trial and draw all its params, under the lock."""
        if self.spec.grid and not grid_has_next(self.study, self.spec, self.first_number):
            return None
        number = len(self.study.get_trials(deepcopy=False))  # the next one, under the lock
        self.study.sampler = make_sampler(self.spec, trial_number=number)
        trial = self.study.ask()
        overrides = [*self.base, *suggest_overrides(trial, self.spec)]
        self.storage.record_heartbeat(trial._trial_id)  # stale detection needs one beat
        out_dir = self.study_dir / f"trial_{trial.number}"
        if (out_dir / "record.json").exists():  # left by an older study of the same name
            out_dir = out_dir.with_name(f"{out_dir.name}_{os.urandom(3).hex()}")
        trial.set_user_attr("record_dir", str(out_dir.resolve()))
        if self.spec.replicates > 1:
            dirs = [str((out_dir / f"seed_{k}").resolve()) for k in range(self.spec.replicates)]
            trial.set_user_attr("replicate_dirs", dirs)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        retried = self.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        log.info(
            "trial %d (%s%s)%s: %s",
            trial.number,
            self.clock.begin(done),
            self.clock.left(),
            f" (retry of {retried})" if retried is not None else "",
            " ".join(overrides[len(self.base) :]),
        )
        return trial, overrides, out_dir

    def _run(self, trial: optuna.Trial, overrides: list[str], out_dir: Path) -> None:
        with Heartbeat(self.storage, trial._trial_id):
            runs = self.spec.replicate_overrides()
            recs, dirs = [], []
            for extra in runs:  # one run, or one per replicate seed in out_dir/seed_<k>
                where = out_dir / extra[0].replace("train.seed=", "seed_") if extra else out_dir
                recs.append(self._run_one(trial, [*overrides, *extra], where))
                dirs.append(where)
                if recs[-1].get("status") != "success":
                    break  # a failed seed fails the trial: the other seeds would not change it
            if len(runs) == 1:
                result = result_of(self.spec, recs[0], out_dir)
            else:
                result = replicate_result(self.spec, recs, dirs)
            self._tell(trial, recs[-1], result)

    def _run_one(self, trial: optuna.Trial, overrides: list[str], out_dir: Path) -> dict:
        if self.isolate or _own_process(overrides):
            return run_isolated(
                spec_path=self.spec_path,
                study=self.spec.name,
                storage=self.url,
                trial_id=trial._trial_id,
                overrides=overrides,
                out_dir=out_dir,
            )
        return run_in_process(trial, self.spec, overrides, out_dir, self.pool)

    def _tell(self, trial: optuna.Trial, rec: dict, result) -> None:
        tell(self.study, trial, result)
        values, status = result.values or objective_values(self.spec, rec), rec.get("status")
        log.info(
            "trial %d: %s%s",
            trial.number,
            status,
            f" {values}" if values and status == "success" else f" ({rec.get('error')})",
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", type=Path, help="sweeps/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every trial")
    p.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///<out-root>/<name>.db)")
    p.add_argument("--n-trials", type=int, help="the study's total (default: the file's)")
    p.add_argument("--name", help="study name (default: the file's)")
    p.add_argument("--isolate", action="store_true", help="one process per trial (no reuse)")
    where = "study folders and SQLite files (default: <output root>/studies)"
    p.add_argument("--out-root", type=Path, default=studies_dir(), help=where)
    p.add_argument("--heartbeat", type=int, help="heartbeat interval, s (default 60)")
    p.add_argument("--grace", type=int, help="a trial silent this long (s) is failed (180)")
    p.add_argument("--no-report", action="store_true", help="summary CSV only, no report")
    args = p.parse_args(argv)
    quiet_third_party()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        spec = load_spec(args.spec, n_trials=args.n_trials, storage=args.storage, name=args.name)
        beat = {"interval": args.heartbeat, "grace": args.grace}
        spec.heartbeat.update({k: v for k, v in beat.items() if v is not None})
        check_heartbeat(spec.heartbeat)
        base = [*spec.overrides, *args.overrides]
        check_study(spec, base)
        driver = Driver(
            spec,
            args.spec,
            base,
            out_root=args.out_root,
            isolate=args.isolate,
            report=not args.no_report,
        )
    except (ConfigError, OmegaConfBaseException, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:  # a bad or unreachable --storage
        why = hide_passwords((str(e).splitlines() or [""])[0])
        print(f"error: cannot open the study storage: {type(e).__name__}: {why}", file=sys.stderr)
        return 2
    try:
        return driver.run()
    except KeyboardInterrupt:
        print(
            "interrupted: the running trial is failed and run again when the study resumes "
            f"(after its {driver.storage.grace_period} s grace period)",
            file=sys.stderr,
        )
        return 130


def _own_process(overrides: list[str]) -> bool:
    """A trial whose engine patches a library differently from what this process has installed
    runs in its own process (nothing is undone); a refused config runs here, to be recorded."""
    from harness.sweep.pool import needs_own_process

    try:
        cfg, _ = compose_trial(overrides)
    except Exception:  # noqa: BLE001 - run_in_process records the refusal
        return False
    return needs_own_process(cfg.engine)
