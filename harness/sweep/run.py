"""One study trial: compose its config with Hydra (the exact validation `python -m harness` runs),
run the one trial routine in this process (sharing the quantized base through a BasePool) or in a
child process (`--isolate`), and turn its record into Optuna user attrs.

The child entry, used by the driver only (the storage URL, which may hold a password, comes in
the environment variable HARNESS_STORAGE_URL, never in the argv that `ps` shows):
    python -m harness.sweep.run --spec sweeps/tpe.yaml --study tpe --trial-id 7 --out DIR
        -- lora.r=16
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import optuna
import torch

from harness.analysis.frame import get_path
from harness.analysis.optuna_records import ATTRS
from harness.config.compose import compose_trial
from harness.errors import ConfigError
from harness.logs import quiet_third_party
from harness.sweep.spec import StudySpec, hydra_value, load_spec, make_pruner
from harness.trial.record import read_record

STORAGE_ENV = "HARNESS_STORAGE_URL"


def check_study(spec: StudySpec, base: list[str]) -> None:
    """Compose the base config with the first value of every searched key: a typo in a key, a
    missing eval_every_steps for the pruner or an unmeasurable objective fails now, not later."""
    first = {
        k: (v[0] if isinstance(v, list) else v.get("choices", [v.get("low")])[0])
        for k, v in spec.space.items()
    }
    cfg, _ = compose_trial([*base, *(f"{k}={hydra_value(v)}" for k, v in first.items())])
    if spec.pruned and cfg.train.eval_every_steps <= 0:
        raise ConfigError(
            "train.eval_every_steps",
            0,
            "> 0 for the pruner: it prunes on the held-out loss reported every eval_every_steps",
        )
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    vram = [o.metric for o in spec.objectives if o.metric.startswith("peak_vram")]
    if vram and not cuda:
        raise ConfigError(
            "objectives.metric",
            vram[0],
            "VRAM is measured on CUDA only; use peak_rss_gib on the CPU",
        )
    if cfg.model.source == "random" and any(o.metric == "score" for o in spec.objectives):
        raise ConfigError(
            "objectives.metric",
            "score",
            "random-weight models have no score; use loss.eval (minimize)",
        )


def pruning_callback(trial: optuna.Trial, spec: StudySpec):
    """`on_eval` for run_trial: report the held-out loss at `step`; True = prune."""
    if not spec.pruned:
        return None

    # Pruners compare intermediate values in the study's direction; held-out loss falls as a
    # trial improves, so a maximizing study (e.g. score) gets -loss.
    sign = -1.0 if spec.directions[0] == "maximize" else 1.0

    reported: set[int] = set()

    def on_eval(step: int, eval_loss: float) -> bool:
        if step in reported:  # the final evaluation repeats the last periodic one's step
            return False
        reported.add(step)
        trial.report(sign * eval_loss, step)
        return trial.should_prune()

    return on_eval


def run_in_process(
    trial: optuna.Trial, spec: StudySpec, overrides: list[str], out_dir: Path, pool
) -> dict:
    """Run the trial here; returns its record. A point of the search space that the config or
    the preflight refuses (ConfigError) becomes a failed result, with its traceback."""
    from harness.trial.pipeline import run_trial

    try:
        cfg, choices = compose_trial(overrides)
        on_eval = pruning_callback(trial, spec)
        return run_trial(
            cfg, out_dir, overrides=overrides, choices=choices, on_eval=on_eval, pool=pool
        )
    except Exception as e:  # noqa: BLE001 - run_trial records the rest itself
        return _setup_failure(e, out_dir)


def run_isolated(
    *, spec_path: Path, study: str, storage: str, trial_id: int, overrides: list[str], out_dir: Path
) -> dict:
    """Run the trial in a fresh Python process (loads and quantizes the base itself); returns
    its record, or a failed result when the process died without writing one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "harness.sweep.run", "--spec", str(spec_path)]
    cmd += ["--study", study, "--trial-id", str(trial_id), "--out", str(out_dir), "--", *overrides]
    env = {**os.environ, STORAGE_ENV: storage}
    with open(out_dir / "trial.log", "w") as log_file:
        proc = subprocess.run(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
    if (out_dir / "record.json").is_file():
        return read_record(out_dir)
    tail = (out_dir / "trial.log").read_text(errors="replace")[-4000:]
    if not (out_dir / "error.txt").exists():  # the child writes it for a refused config
        (out_dir / "error.txt").write_text(tail)
    last = (tail.strip().splitlines() or [""])[-1][:300]
    why = f"trial process exited with code {proc.returncode} without a record"
    return {"status": "failed", "error": f"{why}: {last} (log: {out_dir / 'trial.log'})"}


def _die_with_parent() -> None:
    """Linux: SIGKILL the child when the driver dies, so a killed sweep leaves no orphan trial
    still writing into a trial the rerun has already failed and queued again."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _setup_failure(e: Exception, out_dir: Path) -> dict:
    """The result of a trial that never started: its config or preflight was refused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "error.txt").write_text(traceback.format_exc())
    return {"status": "failed", "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}


def record_attrs(record: dict, out_dir: Path) -> dict:
    """The user attrs stored with a finished trial: where its record is, status, flat metrics."""
    attrs = {"record_dir": str(out_dir.resolve()), "status": record.get("status")}
    if record.get("error"):
        attrs["error"] = str(record["error"])[:500]
    for name, path in ATTRS.items():
        value = get_path(record, path)
        if value is not None:
            attrs[name] = value
    return attrs


def child_main(argv: list[str] | None = None) -> int:
    """The --isolate child: one trial, pruning through the shared storage, record in --out."""
    p = argparse.ArgumentParser(prog="python -m harness.sweep.run")
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--trial-id", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    quiet_third_party()
    if not os.environ.get(STORAGE_ENV):
        print(f"error: {STORAGE_ENV} is not set: the study storage URL", file=sys.stderr)
        return 2
    from harness.trial.pipeline import run_trial  # torch & co: after the arguments are known good

    spec = load_spec(args.spec, name=args.study)
    url = os.environ[STORAGE_ENV]
    study = optuna.load_study(study_name=spec.name, storage=url, pruner=make_pruner(spec))
    trial = optuna.Trial(study, args.trial_id)
    try:
        cfg, choices = compose_trial(args.overrides)
        on_eval = pruning_callback(trial, spec)
        run_trial(cfg, args.out, overrides=args.overrides, choices=choices, on_eval=on_eval)
    except Exception as e:  # noqa: BLE001 - a refused config: the driver records it
        _setup_failure(e, args.out)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
