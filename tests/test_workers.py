"""Two worker processes on one study, through its storage URL: exactly n_trials results, no trial
run twice, both workers busy. SQLite (one host) and PostgreSQL (what several hosts share)."""

import os
import subprocess
import uuid

import optuna
import pytest
from conftest import REPO
from optuna.trial import TrialState
from test_study import load, study_cmd, write_spec

from harness.sweep.storage import is_result, normalize_url

PG_URL = os.environ.get("HARNESS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_DRIVER_URL = normalize_url(PG_URL)  # what the driver connects with (psycopg2 here)


def _pg_reachable() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(PG_URL, connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001 - any failure means: skip, and say why
        return f"PostgreSQL not reachable at {PG_URL}: {type(e).__name__}: {e}"
    return None


def _two_workers(spec, tmp_path, *args: str) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = study_cmd(spec, tmp_path, *args)
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    return [
        subprocess.CompletedProcess(cmd, p.returncode, o, e)
        for p, (o, e) in zip(procs, outs, strict=True)
    ]


def _check(study: optuna.Study, n: int) -> None:
    trials = study.get_trials()
    assert len(trials) == n, [(t.number, t.state) for t in trials]  # no surplus trial either
    assert all(t.state == TrialState.COMPLETE and is_result(t) for t in trials)
    assert len({t.params["train.lr"] for t in trials}) == n  # no point run twice
    assert len({t.user_attrs["record_dir"] for t in trials}) == n
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials


def _spec(tmp_path, name: str, n: int):
    return write_spec(
        tmp_path,
        name,
        n_trials=n,
        sampler={"name": "tpe", "seed": 0},
        space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    )


def test_two_workers_share_a_sqlite_study(tmp_path):
    spec = _spec(tmp_path, "pair", 4)
    procs = _two_workers(spec, tmp_path)
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    _check(load(tmp_path, "pair"), 4)


@pytest.mark.postgres
def test_two_workers_share_a_postgres_study(tmp_path):
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    name = f"test_workers_{uuid.uuid4().hex[:10]}"
    spec = _spec(tmp_path, name, 4)
    try:
        procs = _two_workers(spec, tmp_path, "--storage", PG_URL)
        for p in procs:
            assert p.returncode == 0, p.stderr[-3000:]
        _check(load(tmp_path, name, storage=PG_DRIVER_URL), 4)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=PG_DRIVER_URL)
        except KeyError:
            pass  # never created
