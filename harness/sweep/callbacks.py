"""Hydra callbacks for `python -m harness -m ...` grids (registered in conf/config.yaml).

`SweepSummary` watches each job's record (failure-rate limit) and, when the multirun ends, writes
`summary.csv` in the sweep dir, prints it as a table and builds the report in `<sweep>/report/`.
It prints, as the sweep starts, the command that resumes it (`resume_command`), and as each
trial starts, `trial k of n (its point), ~M min left`.
"""

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.sweep.grid import (
    FailureLimit,
    TrialClock,
    format_table,
    run_report,
    summary_frame,
    write_csv,
)
from harness.trial.record import find_records, read_record

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Summary table + failure-rate limit for Hydra multiruns; does nothing in single runs.

    Args:
        report: also build the HTML/Markdown report (harness.report) into `<sweep>/report/`.
        max_consecutive_failures / max_failure_rate / min_trials: the `FailureLimit`; 0 turns the
            consecutive check off, 1.0 the rate check.
    """

    def __init__(
        self,
        *,
        report: bool = True,
        max_consecutive_failures: int = 5,
        max_failure_rate: float = 0.8,
        min_trials: int = 5,
    ) -> None:
        self.report = report
        self.limit = FailureLimit(max_consecutive_failures, max_failure_rate, min_trials)
        self.statuses: list[str] = []
        self.clock = TrialClock(0)
        self.keys: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.statuses = []
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        print(f"sweep: {sweep_dir}\nresume with: {resume_command(sys.argv[1:], sweep_dir)}")
        task = list(config.hydra.overrides.task)
        self.keys = sweep_keys(task)
        parsed = OverridesParser.create().parse_overrides(task)
        self.clock = TrialClock(sum(map(len, BasicSweeper.split_arguments(parsed, None))))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN or not self.clock.total:
            return
        at = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] in self.keys]
        print(self.clock.start(" ".join(at)), flush=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        out_dir = Path(config.get("out_dir") or HydraConfig.get().runtime.output_dir)
        record = out_dir / "record.json"
        self.clock.end(ran=record.is_file() and record.stat().st_mtime >= self.clock.started_at)
        self.statuses.append(read_record(record)["status"] if record.is_file() else "failed")
        why = self.limit.check(self.statuses)
        if why:
            sweep_dir = Path(config.hydra.sweep.dir)
            self._summarize(config, sweep_dir, build=False)
            print(
                f"sweep stopped by the failure-rate limit: {why}. Last trial: {out_dir} "
                f"(see its record.json / error.txt). Summary so far: {sweep_dir / 'summary.csv'}",
                file=sys.stderr,
            )
            sys.exit(3)  # SystemExit passes through Hydra's launcher: the multirun ends here

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarize(config, Path(config.hydra.sweep.dir), build=self.report)

    def _summarize(self, config: DictConfig, sweep_dir: Path, *, build: bool) -> None:
        paths = find_records(sweep_dir)
        if not paths:
            log.warning("no trial records under %s; no summary written", sweep_dir)
            return
        records = [{**read_record(p), "_dir": p.parent} for p in paths]
        records.sort(key=lambda r: _job_number(r["_dir"]))
        keys = sweep_keys(list(config.hydra.overrides.task)) or None
        frame = summary_frame(records, keys)
        csv = write_csv(frame, sweep_dir / "summary.csv")
        print(format_table(frame))
        print(f"summary: {csv}")
        _settings(records, sweep_dir)
        if build:
            run_report(sweep_dir, sweep_dir / "report", title=f"sweep {sweep_dir.name}")


def _settings(records: list[dict], sweep_dir: Path) -> None:
    """Where a setting ran with several seeds (`-m ... train.seed=0,1,2`): its mean, spread and n
    on the ranking metric, in `settings.csv`, printed."""
    from harness.analysis.frame import records_frame
    from harness.analysis.rankby import rank_by
    from harness.analysis.settings import aggregate, has_replicates
    from harness.errors import ConfigError

    frame = records_frame(records)
    if not has_replicates(frame):
        return
    try:
        metric = rank_by(records, frame)
    except ConfigError:  # no trial has the metric: the summary above says what failed
        return
    settings = aggregate(frame, metric.column, metric.stderr).drop(columns="rows")
    settings.to_csv(sweep_dir / "settings.csv", index=False)
    print(f"per setting, {metric.title} over seeds (mean, sd, 95% interval, n):")
    for row in settings.itertuples():
        sd = "-" if row.sd is None or row.sd != row.sd else f"{row.sd:.4g}"
        span = "" if row.lo is None or row.lo != row.lo else f" [{row.lo:.4g}, {row.hi:.4g}]"
        print(f"  {row.setting}: {row.mean:.4g} sd {sd}{span} n={row.n}")
    print(f"settings: {sweep_dir / 'settings.csv'}")


def resume_command(args: list[str], sweep_dir: Path) -> str:
    """The same command pinned to this sweep dir: rerun it and finished trials are kept, the
    interrupted ones run again."""
    kept = [a for a in args if not a.startswith("hydra.sweep.dir=")]
    return shlex.join(["python", "-m", "harness", *kept, f"hydra.sweep.dir={sweep_dir}"])


def sweep_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun sweeps over: ``["lora.r=4,16", "train.max_steps=3"]`` -> ["lora.r"]."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


def _job_number(path: Path) -> tuple[int, str]:
    name = path.name
    return (int(name), name) if name.isdigit() else (sys.maxsize, str(path))
