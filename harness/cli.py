"""The Hydra entry: compose -> validate -> run one trial -> print where the record is."""

import logging
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, ValidationError

from harness.config.migrate import migrate_override
from harness.config.schema import TRIAL_GROUPS, register_configs, to_trial_config
from harness.errors import ConfigError
from harness.logs import quiet_third_party
from harness.paths import output_root

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("harness")


def main() -> None:
    """`python -m harness [overrides]`: register the schema, migrate old keys, run Hydra."""
    quiet_third_party()
    register_configs()
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        sys.exit(_help(args))
    output_root().mkdir(parents=True, exist_ok=True)  # Hydra searches it for pinned experiments
    migrated = [a if a.startswith("-") else migrate_override(a) for a in args]
    if migrated != args:
        old = " ".join(a for a, m in zip(args, migrated, strict=True) if a != m)
        print(f"note: {old}: engine levers are engine.* keys now; ran with today's keys",
              file=sys.stderr)  # fmt: skip
        sys.argv[1:] = [m for m in migrated if m is not None]
    _check_command(sys.argv[1:])
    _hydra_main()


def _check_command(args: list[str]) -> None:
    """Compose and validate every job of the command before the first trains; a bad point or a
    Hydra rejection ends it here in one line, exit 2, with nothing trained."""
    from harness.config.points import check_points, command_points, error_line

    try:
        points = command_points(args)
        why = check_points(CONF_DIR, points) if points is not None else None
    except HydraException as e:  # an override Hydra cannot parse, or a sweep it cannot expand
        why = error_line(e, args)
    if why:
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)


def _help(args: list[str]) -> int:
    """`--help`: groups and keys from the schema; `--help <group>`: that group's keys in full."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from harness.config.describe import render

    flag = args.index("--help") if "--help" in args else args.index("-h")
    group = args[flag + 1] if flag + 1 < len(args) else None
    if group is not None and group not in TRIAL_GROUPS:
        print(f"error: --help {group}: not a group; groups: {', '.join(TRIAL_GROUPS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = compose("config", return_hydra_config=True)
    choices = dict(dcfg.hydra.runtime.choices)
    with open_dict(dcfg):
        del dcfg["hydra"]
    print(render(Path(CONF_DIR), OmegaConf.to_container(dcfg, resolve=True), choices, group))
    return 0


def job_context() -> tuple[list[str], dict, Path]:
    """(overrides, group choices, output dir) of the current Hydra job."""
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return list(hc.overrides.task), choices, Path(hc.runtime.output_dir)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    """Run one trial; in a multirun every job lands here."""
    quiet_libraries()
    quiet_third_party()  # again: Hydra's job logging setup came after main()
    try:
        cfg = to_trial_config(dcfg)
        overrides, choices, out_dir = job_context()
        if dcfg.get("out_dir"):
            out_dir = Path(dcfg.out_dir)
        rec = _run_job(cfg, overrides, choices, out_dir)
    except (ConfigError, MissingMandatoryValue, ValidationError) as e:
        print(f"error: {_config_message(e)}", file=sys.stderr)
        sys.exit(2)
    _summary(rec, out_dir)
    return rec.get("score")


def _run_job(cfg, overrides: list[str], choices: dict, out_dir: Path) -> dict:
    """In a multirun, the jobs of this process share one quantized base per engine; a job whose
    engine patches a library differently from what this process already has runs in its own
    process instead (nothing is undone)."""
    from harness.sweep.pool import needs_own_process, process_pool
    from harness.trial.pipeline import run_trial
    from harness.trial.record import read_record

    done = _finished(cfg, out_dir)
    if done is not None:
        return done
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return run_trial(cfg, out_dir, overrides=overrides, choices=choices)
    if not needs_own_process(cfg.engine):
        return run_trial(cfg, out_dir, overrides=overrides, choices=choices, pool=process_pool())
    cmd = [sys.executable, "-m", "harness", *overrides, f"out_dir={out_dir}",
           f"hydra.run.dir={out_dir / 'process'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 2:
        raise ConfigError("overrides", " ".join(overrides), proc.stderr.strip().splitlines()[-1])
    return read_record(out_dir)


def _finished(cfg, out_dir: Path) -> dict | None:
    """The record already in out_dir if it holds this very trial (a resumed grid keeps it, byte
    for byte); a record of other settings there is refused: two runs never share a folder."""
    from harness.trial.record import RECORD_NAME, config_hash, read_record

    if not (out_dir / RECORD_NAME).is_file():
        return None
    rec = read_record(out_dir)
    if rec.get("config_hash") != config_hash(cfg):
        raise ConfigError("out_dir", str(out_dir), "holds the record of other settings; "
                          "choose another hydra.sweep.dir / out_dir")  # fmt: skip
    print(f"kept: {out_dir / RECORD_NAME} (this trial finished before; not rerun)")
    return rec


def quiet_libraries() -> None:
    """One progress bar per dataset map is noise next to the trial's own log."""
    import datasets

    datasets.disable_progress_bars()


def _config_message(e: Exception) -> str:
    if isinstance(e, ConfigError):
        return str(e)
    key = getattr(e, "full_key", "") or ""
    return f"{key}: {str(e).splitlines()[0]}" if key else str(e).splitlines()[0]


def _summary(rec: dict, out_dir: Path) -> None:
    tp = rec.get("throughput") or {}
    loss = rec.get("loss") or {}
    mem = rec.get("peak_vram_reserved_gib")
    mem_s = (
        f"{mem:.2f} GiB VRAM reserved"
        if mem is not None
        else f"{rec.get('peak_rss_gib') or 0:.2f} GiB RSS (CPU)"
    )
    print(
        f"[{rec['status']}] {rec['model'].get('name') if rec.get('model') else ''} "
        f"loss {loss.get('final_train')} -> held-out {loss.get('eval')} | "
        f"{tp.get('loss_tokens_per_s', 0):.1f} loss-tok/s | {mem_s} | score {rec.get('score')}"
        + (f" | error: {rec['error']}" if rec.get("error") else "")
    )
    for task, metrics in (rec.get("lm_eval") or {}).items():
        for name, m in metrics.items():
            print(f"  {task} {name}: before {m.get('before')} after {m.get('after')}")
    print(f"record: {out_dir / 'record.json'}")
