"""Bad inputs to the study driver, the report and pick end in one line on stderr naming the field,
the value and what is allowed, exit 2, with nothing created; a storage password never leaves the
driver's memory: not in a log, a file it writes, nor a child's argv."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import REPO
from test_study import run_study, write_spec
from test_workers import _pg_reachable

from harness.analysis.frame import StudySource
from harness.sweep import run as sweep_run
from harness.sweep.storage import mask_url, normalize_url

PG_PW_URL = "postgresql://postgres:pw123@127.0.0.1:5432/test"  # trust auth ignores the password


def _py(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ["PYTHONPATH"]])}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_study_refuses_bad_files_and_flags_in_one_line(tmp_path):
    spec = write_spec(tmp_path, "ok", n_trials=2, space={"lora.r": [4, 8]})
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: bad\nspace: [lora.r: 4\n")
    cases = [
        (tmp_path / "nope.yaml", [], ["spec=", "nope.yaml", "existing study file"]),
        (bad_yaml, [], ["bad.yaml", "valid YAML", "line"]),
        (spec, ["--storage", "sqlite:////etc/passwd/x.db"], ["--storage=", "/etc/passwd"]),
        (spec, ["--storage", "bogus://x"], ["--storage=", "bogus"]),
        (spec, ["--heartbeat", "0"], ["heartbeat.interval=0", ">= 1"]),
        (spec, ["--grace", "-5"], ["heartbeat.grace=-5", ">= 1"]),
    ]
    for path, args, words in cases:
        _one_line_refusal(run_study(path, tmp_path, *args), *words)
    assert not (tmp_path / "studies").exists()  # no DB, no lock file, no trial dir


def test_report_and_pick_refuse_a_storage_or_study_that_is_not_there(tmp_path):
    optuna.create_study(study_name="real", storage=f"sqlite:///{tmp_path / 's.db'}")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        ("harness.report", ["--storage", "bogus://x", "--study", "a"], ["--storage=", "bogus"]),
        ("harness.report", ["--storage", "sqlite:///no.db", "--study", "a"], ["no.db"]),
        ("harness.report", ["--storage", "sqlite:///s.db", "--study", "a"], ["--study=", "real"]),
        ("harness.pick", ["--storage", "sqlite:///s.db", "--study", "a", "--budget-gib", "24"],
         ["--study='a'", "real"]),
        ("harness.pick", ["--storage", "sqlite:///s.db", "--study", "real", "--budget-gib", "-3"],
         ["--budget-gib=-3.0", "> 0"]),
        ("harness.pick", ["--storage", "sqlite:///s.db", "--study", "real", "--budget-gib", "24",
                          "--margin", "-5"], ["--margin=-5.0", "[0, 1)"]),
    ]  # fmt: skip
    for module, args, words in cases:
        _one_line_refusal(_py(module, *args, cwd=tmp_path), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no empty DB, no report dir


def test_storage_url_is_masked_and_reaches_the_child_in_its_environment(tmp_path, monkeypatch):
    assert mask_url(PG_PW_URL) == "postgresql://postgres:***@127.0.0.1:5432/test"
    assert "pw123" not in str(StudySource(PG_PW_URL, "x"))
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(cmd=cmd, env=kw["env"])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep_run.subprocess, "run", fake_run)
    sweep_run.run_isolated(
        spec_path=Path("sweeps/tpe.yaml"),
        study="s",
        storage=PG_PW_URL,
        trial_id=3,
        overrides=["lora.r=4"],
        out_dir=tmp_path / "t",
    )
    assert not any("pw123" in a for a in seen["cmd"])
    assert seen["env"][sweep_run.STORAGE_ENV] == PG_PW_URL


@pytest.mark.postgres
def test_password_is_absent_from_every_output_of_an_isolated_study(tmp_path):
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    name = f"test_secret_{uuid.uuid4().hex[:10]}"
    spec = write_spec(tmp_path, name, n_trials=1, space={"lora.r": [4]})
    try:
        proc = run_study(spec, tmp_path, "--storage", PG_PW_URL, "--isolate")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pw123" not in proc.stdout + proc.stderr
        assert "postgres:***@" in proc.stderr  # the masked URL is what the log shows
        written = [p for p in (tmp_path / "studies").rglob("*") if p.is_file()]
        assert any(p.name == "record.json" for p in written)
        for path in written:
            assert b"pw123" not in path.read_bytes(), path
    finally:
        try:
            optuna.delete_study(study_name=name, storage=normalize_url(PG_PW_URL))
        except KeyError:
            pass
