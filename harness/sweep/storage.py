"""The durable study: RDB storage (SQLite by default, any SQLAlchemy URL), the lock that lets
several workers share it without overshooting n_trials, heartbeats and what happens to the trials
of a worker that died (kill -9, power loss, preemption).

A trial is a *result* once it is COMPLETE, PRUNED, or FAIL with a `status` user attr (oom /
diverged / failed: the trial ran and its record says what happened). Results count toward
n_trials except status "failed": once its cause is fixed, a rerun of the study runs others (a
grid: that point again) until n_trials results are usable. A FAIL without a status is a trial
whose worker died mid-way: it does not count, and a copy of it is queued (WAITING) and run
again, up to `max_retry` times; after that the copy is recorded as a failed result.
"""

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import re
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError

log = logging.getLogger(__name__)


def default_storage(name: str, root: Path) -> str:
    """``sqlite:///<root>/<name>.db`` (absolute: the same study whatever the cwd of a rerun)."""
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / f'{name}.db').resolve()}"


def normalize_url(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; use psycopg2 (the ``postgres`` extra)
    when that is what is installed, so the plain URL works as documented."""
    u = sqlalchemy.engine.make_url(url)
    if u.drivername == "postgresql" and not importlib.util.find_spec("psycopg"):
        if importlib.util.find_spec("psycopg2"):
            return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def mask_url(url: str) -> str:
    """The URL as every log, summary and report shows it: ``postgresql://root:***@host/db``."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL, but hide a "user:password@" all the same
        return hide_passwords(url)


def hide_passwords(text: str) -> str:
    """Any ``//user:password@`` in free text (an error message) as ``//user:***@``."""
    return re.sub(r"(//[^/:@\s]*:)[^/@\s]*@", r"\1***@", text)


def check_url(url: str, *, exists: bool) -> None:
    """Refuse a storage URL that cannot work before anything is created: an unknown dialect or
    driver, a SQLite path that cannot be a file (a parent is a file, not writable) or, with
    `exists`, a SQLite file that is not there (opening it would create an empty database)."""
    allowed = "a SQLAlchemy URL, e.g. sqlite:///outputs/studies/tpe.db or postgresql://user@host/db"
    try:
        u = sqlalchemy.engine.make_url(url)
        u.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as e:
        why = (str(e).splitlines() or [""])[0]
        raise ConfigError("--storage", mask_url(url), f"{allowed} ({why})") from None
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return
    path = Path(u.database).absolute()
    if exists:
        if not path.is_file():
            raise ConfigError("--storage", url, f"an existing study database; no file {path}")
        return
    parent = next(p for p in path.parents if p.exists())
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError("--storage", url, f"a SQLite file path; {parent} is not a writable dir")


def load_existing_study(url: str, name: str) -> optuna.Study:
    """The study `name` in `url`, read-only in spirit: nothing is created when the database or
    the study is not there (Optuna would create the file and its tables first)."""
    check_url(url, exists=True)
    url = normalize_url(url)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as con:
            names = []
            if sqlalchemy.inspect(con).has_table("studies"):
                names = con.execute(sqlalchemy.text("SELECT study_name FROM studies")).scalars()
                names = sorted(names)
    finally:
        engine.dispose()
    if name not in names:
        held = ", ".join(names) if names else "none"
        raise ConfigError("--study", name, f"a study in {mask_url(url)} (it holds: {held})")
    return optuna.load_study(study_name=name, storage=url)


def open_storage(
    url: str, *, interval: int, grace: int, max_retry: int, on_recorded: Callable | None = None
) -> RDBStorage:
    """RDBStorage with heartbeats: a RUNNING trial silent for `grace` s is failed and retried,
    or, where `on_recorded(study, trial)` tells it from its record, not retried."""
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    engine_kwargs: dict = {"pool_pre_ping": True}
    if backend == "sqlite":
        _sqlite_wal(url)
        # Workers, their heartbeat threads and isolated trial processes write to one file:
        # wait for the write lock (seconds at most) instead of failing at sqlite's 5 s default.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=interval,
        grace_period=grace,
        heartbeat_stale_trial_callback=StaleTrialHandler(max_retry, on_recorded),
    )


def _sqlite_wal(url: str) -> None:
    """WAL journal: readers (the dashboard, other workers) no longer block the writer."""
    path = sqlalchemy.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=120)) as con:
            con.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def study_lock(url: str, name: str) -> Iterator[None]:
    """Serialize "count the trials, then ask for one" across every worker of a study, so n_trials
    is never overshot and a grid point never drawn twice. SQLite: a lock file beside the DB
    (flock; one host, like SQLite itself). PostgreSQL: pg_advisory_lock, held by the connection.
    Both are freed by the OS or the server when a holder dies."""
    u = sqlalchemy.engine.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite" and u.database not in (None, "", ":memory:"):
        with open(f"{u.database}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif backend == "postgresql":
        key = zlib.crc32(f"qlora-harness/{name}".encode()) & 0x7FFFFFFF
        with _lock_engine(url).connect() as con:
            con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                con.commit()
    else:
        _warn_no_lock(backend)
        yield


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@functools.cache
def _warn_no_lock(backend: str) -> None:
    log.warning(
        "no cross-worker lock for %s storage: several workers may overshoot n_trials by "
        "up to one trial each",
        backend,
    )


class StaleTrialHandler:
    """Called by Optuna for a RUNNING trial whose heartbeat stopped: queue a copy of it (same
    params) up to `max_retry` times; then record the copy as a failed result, so a grid point
    that kills its worker every time is reported, not retried forever."""

    def __init__(self, max_retry: int, on_recorded: Callable | None = None) -> None:
        self.max_retry, self.on_recorded = max_retry, on_recorded
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.on_recorded and self.on_recorded(study, trial):
            log.warning(
                "trial %d lost its worker after its record was written: told from it", trial.number
            )
            return
        tries = len(trial.system_attrs.get("retry_history", [])) + 1
        if tries <= self.max_retry:
            log.warning(
                "trial %d lost its worker (no heartbeat); queued again (%d/%d)",
                trial.number,
                tries,
                self.max_retry,
            )
            self.retry(study, trial)
            return
        log.error("trial %d lost its worker %d times; recorded as failed", trial.number, tries)
        attrs = {k: v for k, v in trial.user_attrs.items() if k != "record_dir"}
        attrs.update(
            status="failed",
            error=f"the worker died {tries} times during this trial "
            "(killed, preempted or crashed); see its trial dirs",
        )
        study.add_trial(
            optuna.create_trial(
                state=TrialState.FAIL,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=attrs,
                system_attrs={**trial.system_attrs, "failed_trial": trial.number},
            )
        )


def is_result(trial: FrozenTrial) -> bool:
    """Does this trial count toward n_trials (see the module docstring)?"""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "status" in trial.user_attrs


def is_usable(trial: FrozenTrial) -> bool:
    """Does this result count toward n_trials (success, oom, pruned, diverged; not failed)?"""
    return is_result(trial) and trial.user_attrs.get("status") != "failed"


@dataclass
class Progress:
    results: list[FrozenTrial] = field(default_factory=list)  # in trial-number order
    running: list[FrozenTrial] = field(default_factory=list)

    @property
    def usable(self) -> list[FrozenTrial]:
        return [t for t in self.results if is_usable(t)]

    @property
    def taken(self) -> int:
        """Slots of n_trials with a usable result or being worked on."""
        return len(self.usable) + len(self.running)


def progress(study: optuna.Study) -> Progress:
    trials = study.get_trials(deepcopy=False)
    return Progress(
        results=[t for t in trials if is_result(t)],
        running=[t for t in trials if t.state == TrialState.RUNNING],
    )


class Heartbeat:
    """Beat for one trial every `interval` s while the block runs (Optuna does this itself only
    inside `study.optimize`; the driver uses ask/tell)."""

    def __init__(self, storage: RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval() or 60
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat is retried; grace covers it
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, e)
            self._stop.wait(self.interval)
