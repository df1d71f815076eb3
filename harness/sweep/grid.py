"""What every sweep shares, Hydra `-m` grid or Optuna study: one summary row per trial, the
failure-rate limit and the (optional) report step.

    python -m harness -m lora.r=4,16,64     # -> outputs/sweeps/<time>/summary.csv (+ report/)
"""

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.frame import SUMMARY_COLUMNS, override_items, summary_row

log = logging.getLogger(__name__)

FAILED = ("failed", "oom", "diverged")  # what the failure-rate limit counts; pruned is healthy


def swept_keys(records: Sequence[dict]) -> list[str]:
    """Override keys whose value differs between records (all override keys if only one)."""
    seen: dict[str, set[str]] = {}
    for rec in records:
        for key, val in override_items(rec.get("overrides") or []).items():
            seen.setdefault(key, set()).add(val)
    varying = [k for k, vals in seen.items() if len(vals) > 1 or len(records) == 1]
    # a key missing from some records also varies (they ran with the default)
    partial = [k for k in seen if k not in varying and _missing_somewhere(records, k)]
    return sorted(varying + partial)


def _missing_somewhere(records: Sequence[dict], key: str) -> bool:
    return any(key not in override_items(r.get("overrides") or []) for r in records)


def summary_frame(records: Sequence[dict], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per record: the swept config keys, then `SUMMARY_COLUMNS`, then the record dir.

    Args:
        records: trial records, each with a ``_dir`` entry (where its record.json lives).
        keys: config columns; by default the override keys that vary (`swept_keys`).
    """
    keys = list(keys) if keys is not None else swept_keys(records)
    rows = [summary_row(rec, keys) for rec in records]
    frame = pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])
    frame["record_dir"] = [str(r.get("_dir", "")) for r in records]
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write atomically (temp file + rename): a summary is never seen half-written, even with
    several workers finishing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def format_table(frame: pd.DataFrame) -> str:
    """The summary as a fixed-width table for the terminal (errors cut to one short line)."""
    shown = frame.drop(columns=["record_dir"], errors="ignore")
    shown = shown.loc[:, shown.notna().any() | (shown.columns == "error")].copy()  # not measured
    if "error" in shown:
        shown["error"] = shown["error"].map(lambda e: "" if pd.isna(e) else str(e)[:60])
    for col in shown.select_dtypes(include="object").columns:
        shown[col] = shown[col].where(shown[col].notna(), "-")
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


@dataclass
class TrialClock:
    """`trial k of n (point), ~M min left` for a grid or a study: the time left is the mean time
    of the trials this process ran (kept ones, which take no time, are left out) times the trials
    left, this one included."""

    total: int
    durations: list[float] = field(default_factory=list)
    done: int = 0
    started_at: float = 0.0

    def start(self, point: str = "", done: int | None = None) -> str:
        """`trial k of n (point), ~M min left` for the trial that starts now; `done`: results
        so far (a study's count, shared by its workers), else the trials this clock saw end."""
        return f"trial {self.begin(done)}" + (f" ({point})" if point else "") + self.left()

    def begin(self, done: int | None = None) -> str:
        """Start the clock of the next trial; returns `k of n`."""
        self.started_at = time.time()
        if done is not None:
            self.done = done
        return f"{min(self.done + 1, self.total)} of {self.total}"

    def left(self) -> str:
        """`, ~M min left` for the trials left, this one included; nothing before one ran."""
        if not self.durations:
            return ""
        left = sum(self.durations) / len(self.durations) * (self.total - min(self.done, self.total))
        return f", ~{round(left)} s left" if left < 90 else f", ~{round(left / 60)} min left"

    def end(self, *, ran: bool = True) -> None:
        """The trial ended; `ran`: it trained here (its time counts toward the estimate)."""
        self.done += 1
        if ran and self.started_at:
            self.durations.append(time.time() - self.started_at)


@dataclass
class FailureLimit:
    """Stop a sweep in which (nearly) everything fails, instead of burning the budget.

    Trips on `consecutive` failed/oom results in a row, or on more than `rate` of all results
    failing once at least `min_trials` have finished. Pruned trials are healthy results.
    """

    consecutive: int = 5
    rate: float = 0.8
    min_trials: int = 5

    def check(self, statuses: Sequence[str]) -> str | None:
        """None while the sweep may go on; else why it must stop."""
        tail = 0
        for status in reversed(statuses):
            if status not in FAILED:
                break
            tail += 1
        if self.consecutive and tail >= self.consecutive:
            return f"the last {tail} trials all failed (status failed/oom)"
        n_failed = sum(s in FAILED for s in statuses)
        if len(statuses) >= self.min_trials and n_failed > self.rate * len(statuses):
            return f"{n_failed} of {len(statuses)} trials failed (limit: {self.rate:.0%})"
        return None


def run_report(source: Any, out_dir: Path, *, title: str) -> dict[str, Path] | None:
    """Build the sweep report (harness.report) if that module is available; never fails the
    sweep: the summary CSV is already written when this runs."""
    try:
        from harness.analysis.report import build_report
    except ImportError as e:
        log.warning("report skipped: harness.report is not available (%s)", e)
        return None
    try:
        files = build_report(source, out_dir, title=title)
    except Exception as e:  # noqa: BLE001 - a broken report must not lose the sweep's results
        log.warning("report failed (%s: %s); the summary CSV is complete", type(e).__name__, e)
        return None
    print(f"report: {files.get('report.html', out_dir)}")
    return files
