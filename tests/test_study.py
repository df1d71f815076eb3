"""Optuna studies through the real driver (`python -m harness.study`) on the tiny random llama:
read back from SQLite, resume with n_trials as the total, failures as results, the failure-rate
limit, pruning, per-trial process isolation and kill -9 in the middle of a trial."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, load_json
from omegaconf import OmegaConf
from optuna.trial import TrialState

from harness.analysis.optuna_records import study_records
from harness.errors import ConfigError
from harness.sweep.spec import StudySpec, hydra_value, make_sampler
from harness.sweep.storage import is_result

# 2 steps of batch 2: ~5-10 s a trial on 2 busy cores (the held-out loss is the objective).
STUDY_TINY = [*TINY, "train.max_steps=2", "train.batch_size=2"]
LOSS = [{"metric": "loss.eval", "direction": "minimize"}]


def write_spec(tmp_path: Path, name: str, **fields) -> Path:
    spec = {"name": name, "objectives": LOSS, "overrides": STUDY_TINY, **fields}
    spec.setdefault("heartbeat", {"interval": 1, "grace": 4, "max_retry": 2})
    path = tmp_path / f"{name}.yaml"
    OmegaConf.save(OmegaConf.create(spec), path)
    return path


def study_cmd(spec: Path, tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness.study",
        str(spec),
        "--out-root",
        str(tmp_path / "studies"),
        "--no-report",
        *args,
    ]


def run_study(spec: Path, tmp_path: Path, *args: str, timeout: int = 600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        study_cmd(spec, tmp_path, *args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(tmp_path: Path, name: str, storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{tmp_path / 'studies' / f'{name}.db'}"
    return optuna.load_study(study_name=name, storage=url)


def by_state(study: optuna.Study, state: TrialState) -> list:
    return [t for t in study.get_trials() if t.state == state]


def test_four_trial_study_reads_back_and_resumes_to_the_total(tmp_path):
    spec = write_spec(
        tmp_path,
        "tpe4",
        n_trials=4,
        sampler={"name": "tpe", "seed": 3},
        space={
            "lora.r": [4, 8],
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
    )
    proc = run_study(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "tpe4")
    done = by_state(study, TrialState.COMPLETE)
    assert len(study.trials) == 4 and len(done) == 4
    for t in done:  # metrics as user attrs (optuna-dashboard), the record beside
        rec = load_json(Path(t.user_attrs["record_dir"]) / "record.json")
        assert t.user_attrs["status"] == rec["status"] == "success"
        assert t.value == pytest.approx(rec["loss"]["eval"]) == t.user_attrs["loss_eval"]
        assert f"lora.r={t.params['lora.r']}" in rec["overrides"]
        assert rec["config"]["train"]["lr"] == pytest.approx(t.params["train.lr"])
    frame = pd.read_csv(tmp_path / "studies" / "tpe4" / "summary.csv")
    assert list(frame["trial"]) == [0, 1, 2, 3] and set(frame["status"]) == {"success"}
    assert {"lora.r", "train.lr", "loss_eval", "objective_0", "pareto"} <= set(frame.columns)
    assert frame["pareto"].sum() == 1  # one objective: the best trial
    assert "best trial (minimize loss.eval)" in proc.stdout
    # the same command again: nothing to do; n_trials is the total, not "4 more"
    again = run_study(spec, tmp_path)
    assert again.returncode == 0 and len(load(tmp_path, "tpe4").trials) == 4
    more = run_study(spec, tmp_path, "--n-trials", "5")
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(by_state(load(tmp_path, "tpe4"), TrialState.COMPLETE)) == 5


def test_injected_oom_and_nan_are_results_and_the_study_goes_on(tmp_path):
    spec = write_spec(
        tmp_path,
        "faults",
        grid={
            "train.callbacks": ["[faults.OomAtStep2]", "[faults.NanAtStep2]", "[]"],
            "lora.targets": ["all-linear", "[no_such]"],
        },
        fail_limit={"consecutive": 0, "rate": 1.0},  # 5 of 6 fail here, on purpose
    )
    proc = run_study(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path, "faults").get_trials()
    assert len(trials) == 6 and all(is_result(t) for t in trials)
    faults = {"[faults.OomAtStep2]": "oom", "[faults.NanAtStep2]": "nan", "[]": "none"}
    got = {(faults[t.params["train.callbacks"]], t.params["lora.targets"]): t for t in trials}
    oom, nan, ok = (got[(f, "all-linear")] for f in ("oom", "nan", "none"))
    assert oom.state == TrialState.FAIL and oom.user_attrs["status"] == "oom"
    assert oom.user_attrs["oom_phase"] == "train" and "oom_peak_rss_gib" in oom.user_attrs
    assert nan.state == TrialState.FAIL and nan.user_attrs["status"] == "failed"
    assert "non-finite" in nan.user_attrs["error"]
    assert ok.state == TrialState.COMPLETE and ok.user_attrs["status"] == "success"
    bad = got[("none", "[no_such]")]  # refused by the preflight: a result with its traceback
    assert bad.user_attrs["status"] == "failed" and "no_such" in bad.user_attrs["error"]
    assert "Traceback" in (Path(bad.user_attrs["record_dir"]) / "error.txt").read_text()
    frame = pd.read_csv(tmp_path / "studies" / "faults" / "summary.csv")
    assert sorted(frame["status"]) == ["failed", "failed", "failed", "failed", "oom", "success"]


def test_failure_rate_limit_stops_a_study_where_everything_fails(tmp_path):
    spec = write_spec(
        tmp_path,
        "doomed",
        grid={"lora.r": [4, 8, 16, 32]},
        overrides=[*STUDY_TINY, "train.callbacks=[faults.OomAtStep2]"],
        fail_limit={"consecutive": 2},
    )
    proc = run_study(spec, tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "stopped by the failure-rate limit: the last 2 trials all failed" in proc.stderr
    trials = load(tmp_path, "doomed").get_trials()
    assert len(trials) == 2 and {t.user_attrs["status"] for t in trials} == {"oom"}
    assert len(pd.read_csv(tmp_path / "studies" / "doomed" / "summary.csv")) == 2


def test_failed_trials_do_not_count_and_rerun_after_the_fix(tmp_path):
    spec = write_spec(
        tmp_path,
        "fixed",
        grid={"lora.r": [4, 8, 16]},
        overrides=[*STUDY_TINY, "train.callbacks=[faults.NanUntilFixed]"],
        fail_limit={"consecutive": 2},
    )
    first = run_study(spec, tmp_path)
    assert first.returncode == 3, first.stderr[-3000:]
    why = next(line for line in first.stderr.splitlines() if "failure-rate limit" in line)
    named = [w.rstrip(",") for w in why.split() if w.rstrip(",").endswith((".txt", ".json"))]
    assert named and all(Path(p).is_file() for p in named), why  # NaN: record.json, no error.txt
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAULTS_FIXED": "1"}
    rerun = subprocess.run(
        study_cmd(spec, tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = load(tmp_path, "fixed").get_trials()
    usable = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lora.r"] for t in usable) == [4, 8, 16]  # the failed points ran again
    assert len(trials) == 5 and sum(t.user_attrs["status"] == "failed" for t in trials) == 2
    assert len(pd.read_csv(tmp_path / "studies" / "fixed" / "summary.csv")) == 5


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_median_pruner_prunes_on_held_out_loss(tmp_path, isolate):
    # lr 0.02 must run first and set the median; lr 1e-7 barely moves the loss and trails it at
    # the first report (step 1 of 4). GridSampler shuffles its grid by seed: pick one that
    # puts 0.02 first.
    grid = {"train.lr": [0.02, 1e-7]}
    seed = next(
        s for s in range(20) if optuna.samplers.GridSampler(grid, s)._all_grids[0][0] == 0.02
    )
    spec = write_spec(
        tmp_path,
        "prune",
        grid=grid,
        sampler={"name": "grid", "seed": seed},
        overrides=[*STUDY_TINY, "train.max_steps=4", "train.eval_every_steps=1"],
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    proc = run_study(spec, tmp_path, *(["--isolate"] if isolate else []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = sorted(load(tmp_path, "prune").get_trials(), key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and first.params["train.lr"] == 0.02
    assert second.state == TrialState.PRUNED and second.user_attrs["status"] == "pruned"
    assert list(second.intermediate_values) == [1]  # reported once, then stopped
    rec = load_json(Path(second.user_attrs["record_dir"]) / "record.json")
    assert rec["status"] == "pruned" and max(p["step"] for p in rec["loss"]["curve"]) < 4
    assert (Path(second.user_attrs["record_dir"]) / "trial.log").exists() == isolate


def test_kill_9_mid_trial_then_rerun_completes_exactly_n_trials(tmp_path):
    spec = write_spec(
        tmp_path,
        "killed",
        grid={"lora.r": [4, 8, 16]},
        overrides=[*STUDY_TINY, "train.max_steps=6"],
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        study_cmd(spec, tmp_path),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "studies" / "killed.db"
    _wait_for_running_trial(proc, db, number=1)
    time.sleep(1)  # inside the trial: loading, tokenizing or in its 6 steps, not done
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = run_study(spec, tmp_path)  # waits out the 4 s grace, fails trial 1, runs it again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(tmp_path, "killed")
    results = [t for t in study.get_trials() if is_result(t)]
    assert len(results) == 3 and all(t.state == TrialState.COMPLETE for t in results)
    assert sorted(t.params["lora.r"] for t in results) == [4, 8, 16]  # none twice, none lost
    dead = study.trials[1]
    assert dead.state == TrialState.FAIL and "status" not in dead.user_attrs
    retry = [t for t in results if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == dead.params
    assert not (Path(dead.user_attrs["record_dir"]) / "record.json").exists()
    assert len(pd.read_csv(tmp_path / "studies" / "killed" / "summary.csv")) == 3


def test_record_then_kill_is_told_from_its_record_on_resume(tmp_path):
    spec = write_spec(
        tmp_path,
        "told",
        grid={"lora.r": [4, 8]},
        overrides=[*STUDY_TINY, "train.callbacks=[faults.DieBeforeTell]"],
    )
    first = run_study(spec, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    study_dir = tmp_path / "studies" / "told"
    assert (study_dir / "trial_0" / "record.json").is_file()
    rerun = run_study(spec, tmp_path)  # waits out the 4 s grace, tells trial 0 from its record
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(tmp_path, "told")
    results = [t for t in study.get_trials() if is_result(t)]
    assert len(results) == 2 and sorted(t.params["lora.r"] for t in results) == [4, 8]
    told = [t for t in results if t.system_attrs.get("recorded_trial") == 0]
    assert len(told) == 1 and told[0].state == TrialState.COMPLETE
    assert told[0].user_attrs["record_dir"] == study.trials[0].user_attrs["record_dir"]
    assert len(list(study_dir.rglob("record.json"))) == 2  # trial 0's point never ran again
    assert len(pd.read_csv(study_dir / "summary.csv")) == 2
    assert len(study_records(study)) == 2  # what the report reads: each trial once


def _wait_for_running_trial(proc, db: Path, *, number: int, timeout: float = 300) -> None:
    """Return once trial `number` is RUNNING. Reads the SQLite file directly: opening it with
    Optuna from here could race the driver creating its tables."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be killed"
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
                rows = con.execute("SELECT number, state FROM trials").fetchall()
        except sqlite3.OperationalError:
            rows = []  # no file or no tables yet
        if (number, "RUNNING") in rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"trial {number} never ran")


def test_spec_validation_names_the_field():
    space = {"lora.r": [4, 8]}
    with pytest.raises(ConfigError, match="sampler.name"):
        StudySpec(name="x", space=space, n_trials=2, sampler={"name": "cmaes"})
    with pytest.raises(ConfigError, match="prunes single-objective"):
        StudySpec(
            name="x",
            space=space,
            n_trials=2,
            pruner={"name": "median"},
            objectives=[
                {"metric": "score"},
                {"metric": "peak_vram_reserved_gib", "direction": "minimize"},
            ],
        )
    with pytest.raises(ConfigError, match="either grid or space"):
        StudySpec(name="x", grid=space, space=space)
    with pytest.raises(ConfigError, match="at most the grid size 2"):
        StudySpec(name="x", grid=space, n_trials=3)
    with pytest.raises(ConfigError, match="constraints"):
        StudySpec(name="x", space=space, n_trials=2, constraints=["peak_vram_reserved_gib < 2"])
    grid = StudySpec(name="x", grid={"quant": ["nf4", "fp4"], "quant.double_quant": [True]})
    assert grid.n_trials == 2 and isinstance(make_sampler(grid), optuna.samplers.GridSampler)
    nsga = StudySpec(
        name="x",
        space=space,
        n_trials=2,
        sampler={"name": "nsga2", "seed": 1},
        constraints=["peak_vram_reserved_gib <= 24"],
    )
    assert isinstance(make_sampler(nsga), optuna.samplers.NSGAIISampler)
    assert [hydra_value(v) for v in (True, None, 1e-5, "dora+rslora", "a b")] == [
        "true",
        "null",
        "1e-05",
        "dora+rslora",
        "'a b'",
    ]


def test_every_named_sweep_loads_and_composes():
    """Each sweeps/*.yaml opens with its command and composes with the real config."""
    from harness.sweep.run import check_study
    from harness.sweep.spec import load_spec

    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        first = path.read_text().splitlines()[:6]
        assert first[0].startswith("# ") and any("python -m harness" in x for x in first), path
        spec = load_spec(path)
        vram = any(o.metric.startswith("peak_vram") for o in spec.objectives)
        try:
            check_study(spec, spec.overrides)
        except ConfigError as e:  # a VRAM objective is refused where no CUDA will run it
            assert vram and not torch.cuda.is_available() and "CUDA" in str(e), (path, e)
            continue
        check_study(spec, spec.overrides)


def test_multi_objective_nsga2_reports_the_feasible_pareto_set(tmp_path):
    """Minimize held-out loss and peak RSS (VRAM on a GPU) under a constraint only rank 4
    meets; the Pareto set written matches Optuna's own `best_trials` (which honours it)."""
    spec = write_spec(
        tmp_path,
        "mo",
        n_trials=4,
        sampler={"name": "nsga2", "seed": 0, "population_size": 2},
        objectives=[
            {"metric": "loss.eval", "direction": "minimize"},
            {"metric": "peak_rss_gib", "direction": "minimize"},
        ],
        constraints=["params.trainable <= 10000"],  # r=4: 8192 adapter params; r=8: 16384
        space={"lora.r": [4, 8]},
    )
    proc = run_study(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "mo")
    for t in study.trials:
        assert t.constraints == {
            "params.trainable <= 10000": t.user_attrs["params_trainable"] - 1e4
        }
    front = pd.read_csv(tmp_path / "studies" / "mo" / "pareto.csv")
    assert len(front) >= 1 and set(front["lora.r"]) == {4} and front["feasible"].all()
    assert sorted(front["trial"]) == sorted(t.number for t in study.best_trials)
    assert "Pareto set (minimize loss.eval, minimize peak_rss_gib)" in proc.stdout


def test_replicated_score_less_study_picks_its_best_trial_by_its_objective(tmp_path, capsys):
    """replicates: 2 runs each trial at train.seed=0,1 and tells Optuna the mean held-out loss;
    pick reads the study's objective (no score exists) and names its best trial."""
    from harness.analysis.pick import main as pick

    spec = write_spec(tmp_path, "reps", replicates=2, sampler={"name": "grid", "seed": 0},
                      grid={"train.lr": [1.0e-4, 5.0e-2]})  # fmt: skip
    proc = run_study(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "reps")
    assert study.user_attrs["objectives"] == LOSS
    for t in by_state(study, TrialState.COMPLETE):
        dirs = t.user_attrs["replicate_dirs"]
        recs = [load_json(Path(d) / "record.json") for d in dirs]
        assert [r["config"]["train"]["seed"] for r in recs] == [0, 1]
        assert t.value == pytest.approx(sum(r["loss"]["eval"] for r in recs) / 2)
        assert all(r["loss"]["eval_stderr"] > 0 for r in recs)
        assert all((Path(d) / "heldout_items.jsonl").is_file() for d in dirs)
    records = study_records(study)
    assert len(records) == 4 and all(r["_objectives"] == LOSS for r in records)
    best = study.best_trial
    url = f"sqlite:///{tmp_path / 'studies' / 'reps.db'}"
    assert pick(["--budget-gib", "80", "--storage", url, "--study", "reps"]) == 0
    out = capsys.readouterr().out
    assert "Ranked by held-out loss (lower is better; the study's objective: minimize" in out
    # The study's best trial leads the ranking (its seeds may still tie with the other's: then
    # the cheaper one is picked, and the line says so).
    lr, other = best.params["train.lr"], ({1.0e-4, 5.0e-2} - {best.params["train.lr"]}).pop()
    lead = f"lr={lr:.3g} - lr={other:.3g} = "
    assert lead in out or f"lr={lr:.3g} leads on held-out loss" in out, out
    assert "seeds a side" in out and "mean of 2 seeds" in out


def test_replicates_refuse_a_pruner_and_a_searched_seed():
    base = {"name": "x", "space": {"lora.r": [4]}, "n_trials": 1, "replicates": 3}
    with pytest.raises(ConfigError, match="pruner.name='median': none with replicates > 1"):
        StudySpec(**base, pruner={"name": "median"})
    with pytest.raises(ConfigError, match="space.train.seed"):
        StudySpec(**{**base, "space": {"train.seed": [0, 1]}})
    with pytest.raises(ConfigError, match="replicates=0: an integer >= 1"):
        StudySpec(**{**base, "replicates": 0})
    assert StudySpec(**base).replicate_overrides() == [[f"train.seed={k}"] for k in range(3)]
