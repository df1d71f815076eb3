"""Which setting for a GPU budget: measured where we measured, predicted (with its error) elsewhere.

A measured trial fits when its train-phase peak reserved VRAM times (1 + margin) is within the
budget; the margin covers the CUDA context (~0.5 GiB, outside torch's reserved figure) and
run-to-run variation. Where nothing measured fits, the memory model predicts each successful
setting (and variants with smaller batches or full checkpointing) and those are marked predicted.

Among the settings that fit, a quality metric (score, held-out loss, a study's objective) picks
by harness.analysis.ties: the leader and every setting within noise of it form a tie set, and the
cheapest of the set is chosen. Costs (throughput, memory) rank as measured.
"""

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from harness.analysis.frame import metric
from harness.analysis.rankby import FIXED, RankBy
from harness.analysis.settings import setting_id
from harness.analysis.ties import Candidate, Verdict, decide_among
from harness.memory.fit import Calibration
from harness.memory.model import predict_peak_gib, setting_from_record, shape_from_record
from harness.memory.terms import Setting, Shape


@dataclass
class Choice:
    """One answer: a record (and any changes to it) with what it needs."""

    kind: str  # "measured" | "predicted"
    record: dict[str, Any]
    peak_gib: float  # measured or predicted train-phase peak reserved VRAM
    need_gib: float  # peak * (1 + margin)
    error_pct: float | None = None  # predicted: the memory model's held-out mean abs error
    changes: dict[str, Any] = field(default_factory=dict)  # dotted keys changed from the record
    model: str | None = None  # predicted for another model than the record's
    verdict: Verdict | None = None  # how a quality metric chose it among the settings that fit


@dataclass(frozen=True)
class Predictor:
    """What a predicted answer needs from the memory model."""

    calib: Calibration | None = None  # None: the built-in prior
    error_pct: float | None = None  # its held-out mean abs error, shown beside a prediction
    shape: Shape | None = None  # predict for a model the sweep never ran (None: each record's own)
    model: str | None = None  # that model's name


def need_gib(peak: float, margin: float) -> float:
    """Peak plus the safety margin."""
    return peak * (1.0 + margin)


def measured_fits(frame: pd.DataFrame, budget_gib: float, margin: float) -> pd.DataFrame:
    """Successful trials with a CUDA peak that fits the budget with the margin (frame order)."""
    ok = frame[(frame["status"] == "success") & frame["peak_vram_reserved_gib"].notna()]
    return ok[need_gib(ok["peak_vram_reserved_gib"], margin) <= budget_gib]


def as_metric(objective: str | RankBy) -> RankBy:
    """A ranking metric from its name (score | loss | throughput | memory) or itself."""
    return objective if isinstance(objective, RankBy) else FIXED[objective]


def rank(frame: pd.DataFrame, metric: RankBy) -> pd.DataFrame:
    """Rows best first by the metric, missing values last; then the score, then tokens/s."""
    cols = [metric.column] + [c for c in ("score", "loss_tokens_per_s") if c != metric.column]
    return frame.sort_values(cols, ascending=[not metric.higher, False, False][: len(cols)],
                             na_position="last")  # fmt: skip


def measured_verdict(
    fits: pd.DataFrame, metric: RankBy, records: list[dict[str, Any]] | None
) -> Verdict | None:
    """The tie-aware pick among measured rows that fit (one candidate per setting, its
    replicates together); a candidate's payload is its first row's frame index."""
    ok = fits[fits[metric.column].notna()]
    cands = []
    for _, group in ok.groupby("setting_id", sort=False):
        first = group.iloc[0]
        cands.append(Candidate(
            label=str(first["setting"]),
            records=[records[i] for i in group.index] if records else [{} for _ in group.index],
            values=group[metric.column].astype(float).tolist(),
            stderr=_float(first.get(metric.stderr)) if metric.stderr else None,
            peak_gib=float(group["peak_vram_reserved_gib"].max()),
            tps=_float(group["loss_tokens_per_s"].mean()),
            params=_float(first.get("params_trainable")),
            payload=first.name,
        ))  # fmt: skip
    return decide_among(cands, metric)


def pick_measured(
    frame: pd.DataFrame, budget_gib: float, *, objective: str | RankBy = "score",
    margin: float = 0.10, records: list[dict[str, Any]] | None = None,
) -> pd.Series | None:  # fmt: skip
    """The measured row to pick for a budget, or None when nothing measured fits.

    Args:
        frame: ``records_frame(records)`` output.
        budget_gib: GPU memory to fit in (GiB).
        objective: score | loss | throughput | memory, or a `RankBy`.
        margin: safety margin on the measured peak (0.10 = +10%).
        records: the frame's records (index i -> records[i]), for per-item comparisons.
    """
    metric = as_metric(objective)
    fits = measured_fits(frame, budget_gib, margin)
    if fits.empty:
        return None
    if not metric.quality:
        return rank(fits, metric).iloc[0]
    verdict = measured_verdict(fits, metric, records)
    return None if verdict is None else fits.loc[verdict.chosen.payload]


def closest_measured(frame: pd.DataFrame) -> pd.Series | None:
    """The successful CUDA trial with the smallest peak (what comes nearest to any budget)."""
    ok = frame[(frame["status"] == "success") & frame["peak_vram_reserved_gib"].notna()]
    return None if ok.empty else ok.sort_values("peak_vram_reserved_gib").iloc[0]


FREE = {"engine.kept_layers"}  # changes that keep the math and the speed: preferred to any other


def variants(setting: Setting) -> list[dict[str, Any]]:
    """Cheaper variants of a setting: its kept layers at the top (the same math and speed, never
    a higher peak), full checkpointing, then each with the batch halved down to 1."""
    layouts: list[dict[str, Any]] = [{}]
    if setting.kept_layers != "top" and setting.checkpointing in ("selective", "offload"):
        layouts.append({"engine.kept_layers": "top"})
    if setting.checkpointing != "full":
        layouts.append({"engine.checkpointing": "full"})
    batches, b = [setting.batch_size], setting.batch_size
    while b > 1:
        b //= 2
        batches.append(max(b, 1))
    out = []
    for layout in layouts:
        for batch in batches:
            change = dict(layout)
            if batch != setting.batch_size:
                change["train.batch_size"] = batch
            out.append(change)
    return out


def _apply(setting: Setting, change: dict[str, Any]) -> Setting:
    return replace(
        setting,
        checkpointing=change.get("engine.checkpointing", setting.checkpointing),
        kept_layers=change.get("engine.kept_layers", setting.kept_layers),
        batch_size=change.get("train.batch_size", setting.batch_size),
    )


def predicted_fits(
    records: list[dict[str, Any]], budget_gib: float, *, margin: float, predictor: Predictor
) -> list[Choice]:
    """Per successful record, its best predicted variant that fits: the fewest changes that cost
    speed or change the math (FREE ones cost nothing), the fewest changes, the lowest peak."""
    p, out = predictor, []
    for rec in records:
        own = shape_from_record(rec.get("model") or {})
        if rec.get("status") != "success" or (p.shape or own) is None:
            continue
        setting, best = setting_from_record(rec), None
        for change in variants(setting):
            pred = predict_peak_gib(p.shape or own, _apply(setting, change), p.calib)
            peak = pred["total"]
            if need_gib(peak, margin) > budget_gib or pred.get("exceeds_cap"):
                continue  # too big, or an OOM under the record's engine.memory_cap_gib
            key = (len(change.keys() - FREE), len(change), peak)
            if best is None or key < best[0]:
                best = (key, Choice("predicted", rec, peak, need_gib(peak, margin), p.error_pct,
                                    change, p.model))  # fmt: skip
        if best is not None:
            out.append(best[1])
    return out


def pick_predicted(
    records: list[dict[str, Any]],
    budget_gib: float,
    *,
    objective: str | RankBy = "score",
    margin: float = 0.10,
    predictor: Predictor | None = None,
) -> Choice | None:
    """The predicted fit to pick among successful settings and their cheaper variants.

    ``memory``: the lowest predicted peak; ``throughput``: the fastest source trial; a quality
    metric: the tie-aware pick (harness.analysis.ties) with the predicted peak as the cost.
    """
    metric = as_metric(objective)
    fits = predicted_fits(records, budget_gib, margin=margin, predictor=predictor or Predictor())
    if not fits:
        return None
    if metric.name == "memory":
        return min(fits, key=lambda c: (c.peak_gib, *_desc(c.record.get("score"), True)))
    if not metric.quality:
        return min(fits, key=lambda c: _desc(value(c.record, metric.column), metric.higher))
    by_setting: dict[str, list[Choice]] = {}
    for c in fits:
        if value(c.record, metric.column) is not None:
            by_setting.setdefault(setting_id(c.record), []).append(c)
    cands = [
        Candidate(
            label=group[0].record.get("_setting") or group[0].record.get("_label", ""),
            records=[c.record for c in group],
            values=[float(value(c.record, metric.column)) for c in group],
            stderr=_float(value(group[0].record, metric.stderr)),
            peak_gib=max(c.peak_gib for c in group),
            tps=_float(value(group[0].record, "loss_tokens_per_s")),
            params=_float(value(group[0].record, "params_trainable")),
            payload=group[0],
        )
        for group in by_setting.values()
    ]
    verdict = decide_among(cands, metric)
    if verdict is None:
        return None
    chosen = verdict.chosen.payload
    chosen.verdict = verdict
    return chosen


def decide(
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    budget_gib: float,
    *,
    objective: str | RankBy = "score",
    margin: float = 0.10,
    predictor: Predictor | None = None,
) -> Choice | None:
    """Measured if anything measured fits (and no other model was asked for), else predicted.

    ``frame`` must be ``records_frame(records)`` unchanged: its index maps rows to records.
    """
    metric = as_metric(objective)
    if predictor is None or predictor.shape is None:
        fits = measured_fits(frame, budget_gib, margin)
        verdict = measured_verdict(fits, metric, records) if metric.quality else None
        row = pick_measured(frame, budget_gib, objective=metric, margin=margin, records=records)
        if row is not None:
            peak = float(row["peak_vram_reserved_gib"])
            return Choice("measured", records[row.name], peak, need_gib(peak, margin),
                          verdict=verdict)  # fmt: skip
    return pick_predicted(records, budget_gib, objective=metric, margin=margin,
                          predictor=predictor)  # fmt: skip


def value(rec: dict[str, Any], column: str | None) -> Any:
    """A frame column's value in a record (None for no column)."""
    return None if column is None else metric(rec, column)


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _desc(value: float | None, higher: bool) -> tuple[bool, float]:
    """Sort key part: missing values last, then best first."""
    return value is None, -(value or 0.0) if higher else (value or 0.0)
