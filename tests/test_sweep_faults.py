"""Hydra `-m` grids under faults and bad input: a killed grid resumes keeping what finished, every
grid point is checked before the first trains, Hydra's own rejections are one line, exit 2."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY, run_harness

from harness.analysis.report import build_report

NO_REPORT = "hydra.callbacks.sweep_summary.report=false"
RECORDS = Path(__file__).parent / "fixtures" / "records"


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "harness", *args],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _kill_when(proc: subprocess.Popen, path: Path, timeout_s: float = 600) -> None:
    """SIGKILL the whole process group as soon as `path` appears."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, "the grid ended before it could be killed"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_grid_killed_mid_trial_resumes_keeping_finished_trials(tmp_path):
    """kill -9 during trial 1; the printed command reruns trial 1 only, keeps trial 0's record
    byte for byte and writes the summary over both; other settings in that dir are refused."""
    sweep = tmp_path / "sweep"
    args = ["-m", "lora.r=4,8", *TINY, "train.callbacks=[faults.SlowSteps]", NO_REPORT]
    proc = _start([*args, f"hydra.sweep.dir={sweep}"], tmp_path / "first.log")
    _kill_when(proc, sweep / "0" / "record.json")
    first = (sweep / "0" / "record.json").read_bytes()
    assert not (sweep / "1" / "record.json").exists() and not (sweep / "summary.csv").exists()
    printed = (tmp_path / "first.log").read_text()
    resume = shlex.join(["python", "-m", "harness", *args, f"hydra.sweep.dir={sweep.resolve()}"])
    assert f"resume with: {resume}" in printed

    again = run_harness(shlex.split(resume)[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (sweep / "0" / "record.json").read_bytes() == first
    assert f"kept: {sweep.resolve() / '0' / 'record.json'}" in again.stdout
    frame = pd.read_csv(sweep / "summary.csv")
    assert list(frame["lora.r"]) == [4, 8] and set(frame["status"]) == {"success"}

    other = run_harness([*args, "train.max_steps=2", f"hydra.sweep.dir={sweep}"])
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("error: out_dir=")
    assert (sweep / "0" / "record.json").read_bytes() == first


def test_a_bad_grid_point_stops_the_grid_before_any_trial(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_harness(["-m", "lora.r=8,0", *TINY, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lora.r=0" in lines[0] and "grid point 1" in lines[0], lines
    assert not list(sweep.rglob("record.json"))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("quant=int3", "quant=int3: no such quant config; available: fp4, nf4, none"),
        ("optim=foo", "optim=foo: no such optim config; available: adamw_8bit"),
        ("lora.rank=8", "lora.rank=8: no such key (did you mean lora.r?); keys under lora: r, a"),
        ("lora.r=abc", "lora.r=abc: must be an integer"),
        ("quant.double_quant=maybe", "quant.double_quant=maybe: must be true or false"),
        ("+lora.foo=1", "lora.foo=1: no such key"),
    ],
)
def test_hydra_rejections_are_one_line_and_exit_2(override, says, tmp_path):
    proc = run_harness([*TINY, override, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines
    assert "Traceback" not in proc.stdout + proc.stderr


def test_summary_md_escapes_what_it_quotes(tmp_path):
    record = (RECORDS / "h100-llama3-8b" / "t14" / "record.json").read_text()
    trial = tmp_path / "records" / "t0"
    trial.mkdir(parents=True)
    bad = "<script>alert(1)</script> a|b & c"
    (trial / "record.json").write_text(record.replace('"error": "', f'"error": "{bad} ', 1))
    md = build_report(trial, tmp_path / "report", title="<b>sweep</b>", svg=False)["summary.md"]
    text = md.read_text()
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a\\|b &amp; c" in text
