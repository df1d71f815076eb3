"""Sweep report: trial records -> summary table, plots, an HTML page and a Markdown summary.

    python -m harness.report outputs/sweeps/<sweep>         # -> outputs/reports/<sweep>/
    python -m harness.report --storage sqlite:///sweeps.db --study qlora
    python -m harness.report <sweep> --out /tmp/report --title "r sweep, H100"

Writes summary.csv, summary.parquet, <plot>.png and .svg, report.html (self-contained),
summary.md and, when settings ran with several seeds, settings.csv (mean, sd, 95% interval, n per
setting). Failed, OOM and pruned trials stay in every table and figure, greyed, with the reason.
Trials are ranked by one metric (harness/analysis/rankby.py), named at the top of the page.
"""

import argparse
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.costs import metric_text, throughput_text
from harness.analysis.decide import Choice, Predictor, decide, pick_predicted
from harness.analysis.frame import (
    StudySource,
    metric,
    read_error,
    records_frame,
    status_counts,
)
from harness.analysis.html import render_html, render_markdown
from harness.analysis.plots import save_plots
from harness.analysis.rankby import RankBy, rank_by
from harness.analysis.settings import aggregate, has_replicates, setting_id
from harness.analysis.sources import Source, load_records, load_records_frame
from harness.analysis.stats import interval
from harness.analysis.style import ReportInputs
from harness.memory.model import (
    PRIOR_ANCHORS,
    calibrate,
    error_report,
    measured_points,
    point_error,
    predict_peak_gib,
    setting_from_record,
    shape_from_record,
)
from harness.memory.table import BUDGETS_GB, format_seeds_table, seeds_rows
from harness.paths import reports_dir

__all__ = ["build_report", "load_records_frame", "main"]
MARGIN = 0.10


def build_report(
    records_or_dir: Source, out_dir: Path, *, title: str, svg: bool = True,
    objective: str = "auto",
) -> dict[str, Path]:  # fmt: skip
    """Aggregate trial records into every report file under ``out_dir``.

    Args:
        records_or_dir: a sweep dir, a record.json, a ``StudySource`` or loaded record dicts.
        out_dir: where the files go (created).
        title: page title.
        svg: also write an SVG beside each PNG.
        objective: the ranking metric (auto | score | loss | throughput | memory).

    Returns:
        {file name: path} of everything written.

    Raises:
        ConfigError: the ranking metric is missing for every successful trial.
    """
    records = load_records(records_or_dir)
    if not records:
        raise FileNotFoundError(f"no trial records in {records_or_dir}")
    metric = rank_by(records, records_frame(records), objective)
    memory = memory_summary(records)
    frame = with_intervals(ranked(records_frame(records), memory["predicted"], metric))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"summary.csv": out_dir / "summary.csv", "summary.parquet": out_dir / "summary.parquet"}
    frame.to_csv(files["summary.csv"], index=False)
    _parquet_safe(frame).to_parquet(files["summary.parquet"], index=False)
    if has_replicates(frame):
        files["settings.csv"] = out_dir / "settings.csv"
        settings = aggregate(frame, metric.column, metric.stderr).drop(columns="rows")
        settings.to_csv(files["settings.csv"], index=False)
    plots, absent = save_plots(ReportInputs(frame, records, memory, metric), out_dir, svg=svg)
    files.update(plots)
    pngs = {p.stem: p for n, p in files.items() if n.endswith(".png")}
    page = {
        "title": title,
        "frame": frame,
        "images": pngs,
        "absent": absent,
        "memory": memory,
        "budgets": budget_rows(records, frame, memory, metric),
        "seeds": format_seeds_table(
            seeds_rows(memory["calibration"], margin=MARGIN),
            margin=MARGIN,
            calib=memory["calibration"],
        ),
        "meta": _meta(frame, records_or_dir) + f" Ranked by {metric.describe()}.",
    }
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(render_html(**page), encoding="utf-8")
    files["summary.md"] = out_dir / "summary.md"
    files["summary.md"].write_text(render_markdown(**page), encoding="utf-8")
    return files


def memory_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Calibrate on the sweep's CUDA records; predict every trial; score held-out records."""
    calib = calibrate(records)
    predicted, breakdown = [], []
    for rec in records:
        shape = shape_from_record(rec.get("model") or {})
        pred = predict_peak_gib(shape, setting_from_record(rec), calib) if (
            shape and rec.get("config")) else None  # fmt: skip
        predicted.append(pred["total"] if pred else None)
        if pred and rec.get("status") == "success":
            breakdown.append({"label": rec["_label"], "predicted": pred, "score": rec.get("score"),
                              "measured": rec.get("peak_vram_reserved_gib")})  # fmt: skip
    breakdown.sort(key=lambda b: -(b["score"] if b["score"] is not None else -1e9))
    return {
        "calibration": calib,
        "error": error_report(records),
        "in_sample": [point_error(p, calib) for p in measured_points(records)],
        "anchors": [point_error(a, calib) for a in PRIOR_ANCHORS],
        "predicted": predicted,
        "breakdown": breakdown[:8][::-1],
    }


def ranked(frame: pd.DataFrame, predicted: list[float | None], metric: RankBy) -> pd.DataFrame:
    """Successful trials by the ranking metric (then tokens/s), then the rest; index kept
    (row -> record)."""
    frame = frame.assign(predicted_vram_reserved_gib=pd.Series(predicted, dtype=float).values)
    frame["_ok"] = frame["status"] != "success"
    frame = frame.sort_values(["_ok", metric.column, "loss_tokens_per_s", "status"],
                              ascending=[True, not metric.higher, False, True],
                              na_position="last")  # fmt: skip
    ok = ~frame.pop("_ok")
    frame.insert(0, "rank", pd.Series(range(1, ok.sum() + 1), index=frame.index[ok]))
    return frame


def with_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns for the tables: score and held-out loss with their 95% intervals."""

    def text(col: str, se_col: str, digits: int) -> list[str | None]:
        cis = [interval(v, s) for v, s in zip(frame[col], frame[se_col], strict=True)]
        return [None if ci is None else ci.text(digits) for ci in cis]

    return frame.assign(score_ci=text("score", "score_stderr", 3),
                        loss_eval_ci=text("loss_eval", "loss_eval_stderr", 4))  # fmt: skip


def budget_rows(
    records: list[dict[str, Any]], frame: pd.DataFrame, memory: dict[str, Any], rank: RankBy
) -> list[dict[str, Any]]:
    """The answer per common GPU size by the ranking metric (ties broken by cost, as pick
    does): measured, predicted or none."""
    frame = frame.sort_index()  # decide maps rows to records by index
    rows = []
    for budget in BUDGETS_GB:
        predictor = Predictor(memory["calibration"], memory["error"]["mape_pct"])
        c = decide(records, frame, budget, objective=rank, margin=MARGIN, predictor=predictor)
        if c is None:
            low = pick_predicted(records, math.inf, objective="memory", margin=MARGIN,
                                 predictor=Predictor(memory["calibration"]))  # fmt: skip
            rows.append({"budget_gib": budget, "kind": "none",
                         "closest": None if low is None else _closest_text(low)})  # fmt: skip
            continue
        changes = " ".join(f"{k}={v}" for k, v in c.changes.items())
        tps = metric(c.record, "loss_tokens_per_s")
        reps = [
            r
            for r in records
            if r.get("status") == "success" and setting_id(r) == setting_id(c.record)
        ]
        quality = f"{metric_text(reps, rank)}; {throughput_text(c.record)}"
        if c.verdict is not None and len(c.verdict.tie) > 1:
            quality += ". " + c.verdict.line
        rows.append({"budget_gib": budget, "kind": c.kind,
                     "label": c.record.get("_setting") or c.record["_label"],
                     "need_gib": c.need_gib, "error_pct": c.error_pct, "changes": changes,
                     "score": c.record.get("score"), "tps": tps, "quality": quality})  # fmt: skip
    return rows


def _closest_text(c: Choice) -> str:
    change = f" with {' '.join(f'{k}={v}' for k, v in c.changes.items())}" if c.changes else ""
    return f"smallest predicted: {c.record['_label']}{change} needs {c.need_gib:.1f} GiB"


def _meta(frame: pd.DataFrame, source: Source) -> str:
    counts = status_counts(frame)
    where = source if isinstance(source, str | Path | StudySource) else "records"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{len(frame)} trials ({counts}) from {where}; generated {stamp}."


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing types (None/str/bool) become strings so Arrow can type them."""
    out = frame.copy()
    for col in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        kinds = {type(v) for v in out[col].dropna()}
        if len(kinds) > 1:
            out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep dir (record.json files found recursively)")
    p.add_argument("--storage", help="Optuna RDB storage URL, e.g. sqlite:///sweeps.db")
    p.add_argument("--study", help="Optuna study name (with --storage)")
    p.add_argument("--out", type=Path, help="output dir (default: <output root>/reports/<name>)")
    p.add_argument("--title", help="page title (default: the sweep name)")
    p.add_argument("--no-svg", action="store_true", help="PNG only")
    p.add_argument("--objective", default="auto", help="ranking metric: auto | score | loss | "
                   "throughput | memory (default auto: harness/analysis/rankby.py)")  # fmt: skip
    args = p.parse_args(argv)
    if bool(args.storage) != bool(args.study) or bool(args.sweep) == bool(args.study):
        p.error("give a sweep dir, or --storage and --study")
    source: Source = StudySource(args.storage, args.study) if args.study else Path(args.sweep)
    name = args.study or Path(args.sweep).resolve().name
    out = args.out or reports_dir() / name
    try:
        files = build_report(source, out, title=args.title or f"Sweep report: {name}",
                             svg=not args.no_svg, objective=args.objective)  # fmt: skip
    except Exception as e:
        if (why := read_error(e)) is None:
            raise
        print(f"error: {why}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files to {out}/ (open {files['report.html']})")
    return 0
